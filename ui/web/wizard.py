"""The wizard: five steps from a base model to a launched job.

Layout and event wiring only; the logic lives in ui/web/steps.py (model, data, hardware,
launch) and ui/web/review.py (recommendation and live estimate). The wizard keeps its
answers in its controls; once launched, the job lives in the database.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from engine import units
from engine.errors import UserError
from engine.plan import DIFFICULTY_QUESTION, TrainingPlan
from ui.web import charts, first_run, html, refusals, review, run_elsewhere, steps


def context_from(model, difficulty, dataset, rows, hw_kind, gpu, budget, name) -> dict:
    """The earlier steps' answers as plan fields; raises UserError naming the missing one."""
    if not dataset:
        raise UserError("dataset", "check the data in step 2 first (pick a demo skill or upload a file)")
    ctx = {"model": (model or "default").strip(), "difficulty": difficulty or "balanced", "dataset": dataset,
           "dataset_rows": int(rows) if rows else None, "name": (name or "").strip() or None}
    ctx.update(steps.hardware_context(hw_kind, gpu, budget))
    return ctx


def _controls(form: dict, fields: list[str], per_row: int = 2) -> None:
    """Plan-field controls, two to a row so labels and help texts stay readable."""
    for i in range(0, len(fields), per_row):
        with gr.Row(equal_height=False):
            for f in fields[i:i + per_row]:
                form[f] = review.make_control(f)


def build() -> SimpleNamespace:
    """Render the wizard inside the current Blocks context and wire its events."""
    hw_kind, hw_gpu, hw_budget = steps.detect_hardware()
    skills = steps.skill_choices()
    first_skill = skills[0][1] if skills else None
    ui = SimpleNamespace()

    with gr.Tabs(selected="s1", elem_id="wizard-steps") as ui.steps:
        # 1 ------------------------------------------------------------------------------
        with gr.Tab("1 · Base model", id="s1"):
            gr.Markdown("### Which model do you start from?\nThe embedded default is small enough to train on a "
                        "CPU. Pick a catalog model to see what a larger run costs, or type your own.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    gr.HTML(steps.catalog_cards(), elem_classes="lp-cards-wrap")
                with gr.Column(scale=2, elem_classes="lp-panel"):
                    ui.catalog = gr.Dropdown(steps.catalog_choices(), value=None, label="From the catalog",
                                             info="Fills the field below.")
                    ui.model = gr.Textbox(steps.default_model(), label="Base model", elem_id="model-box",
                                          info=TrainingPlan.help("model"))
                    ui.check_model = gr.Button("Check model", size="md")
                    ui.facts = gr.HTML(elem_id="model-facts")
            ui.next1 = gr.Button("Next: task and data →", variant="primary", elem_classes="lp-next", elem_id="next1")

        # 2 ------------------------------------------------------------------------------
        with gr.Tab("2 · Task and data", id="s2"):
            gr.Markdown("### What should the model learn?")
            ui.difficulty = gr.Radio(steps.DIFFICULTY_CHOICES, value="simple" if first_skill else "balanced",
                                     label="How hard is the task?", info=DIFFICULTY_QUESTION + ".",
                                     elem_id="difficulty")
            with gr.Row(equal_height=False):
                with gr.Column(scale=2, elem_classes="lp-panel"):
                    ui.source = gr.Radio([("A demo skill", "demo"), ("My own file", "upload")],
                                         value="demo" if first_skill else "upload", label="Training data",
                                         info=TrainingPlan.help("dataset"), elem_id="data-source")
                    ui.skill = gr.Dropdown(skills, value=first_skill, label="Demo skill", elem_id="skill",
                                           visible=bool(first_skill))
                    ui.skill_info = gr.HTML(steps.skill_description(first_skill))
                    # No file_types: Gradio would refuse other files with a bare "Error" toast; the data
                    # check refuses them in place instead, naming the file and what is accepted.
                    ui.upload = gr.File(label="Upload a file (.jsonl, .json, .csv, .parquet, .txt)",
                                        elem_id="upload", visible=not first_skill)
                    ui.check_data = gr.Button("Check data", size="md", elem_id="check-data")
                with gr.Column(scale=3):
                    ui.data_summary = gr.HTML(elem_id="data-summary")
                    ui.histogram = gr.Plot(charts.empty("Token lengths", "Check the data to see token lengths", 280),
                                           show_label=False, elem_id="token-hist")
            with gr.Accordion("Formatted examples (with the chat template applied)", open=False):
                ui.examples = gr.HTML(elem_id="examples")
            ui.dataset = gr.State(f"demo:{first_skill}" if first_skill else None)
            ui.rows = gr.State(None)
            ui.lengths = gr.State(None)  # the checked data's token lengths, for the expected memory
            ui.next2 = gr.Button("Next: hardware →", variant="primary", elem_classes="lp-next", elem_id="next2")

        # 3 ------------------------------------------------------------------------------
        with gr.Tab("3 · Hardware", id="s3"):
            gr.Markdown("### Where will it train?")
            with gr.Column(elem_classes="lp-panel lp-narrow"):
                ui.hw_kind = gr.Radio(steps.HARDWARE, value=hw_kind, label="Hardware", elem_id="hw-kind")
                ui.gpu = gr.Dropdown(steps.gpu_choices(), value=hw_gpu, label="GPU", info=TrainingPlan.help("gpu"),
                                     visible=hw_kind == "gpu", elem_id="gpu")
                ui.budget = gr.Number(hw_budget, label="GPU memory (GB)", info=TrainingPlan.help("budget_gb"),
                                      visible=hw_kind == "vram", minimum=0, elem_id="budget")
                gr.HTML('<div class="lp-hint">The estimate in the next step checks the plan against this memory '
                        'before anything runs.</div>')
            ui.next3 = gr.Button("Next: review →", variant="primary", elem_classes="lp-next", elem_id="next3")

        # 4 ------------------------------------------------------------------------------
        with gr.Tab("4 · Review", id="s4") as ui.tab4:
            # min widths: below ~1000 px the two columns stack instead of squeezing the reasons table
            with gr.Row(equal_height=False, elem_id="review-row"):
                with gr.Column(scale=5, min_width=480, elem_classes="lp-panel"):
                    gr.Markdown("### Recommended settings")
                    ui.reasons = gr.HTML(elem_id="reasons")
                    ui.form = {}
                    with gr.Accordion("Change a setting", open=False, elem_id="overrides"):
                        ui.main_error = gr.HTML(elem_id="main-error")  # a bad value's one line, in place
                        _controls(ui.form, review.MAIN_FIELDS)
                    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                        ui.advanced_error = gr.HTML(elem_id="advanced-error")
                        _controls(ui.form, review.ADVANCED_FIELDS)
                with gr.Column(scale=6, min_width=480):
                    # the numbers first, above the charts: they answer a change before any redraw
                    ui.verdict = gr.HTML(elem_id="verdict")
                    ui.summary_plot = gr.HTML(elem_id="summary-tiles")
                    ui.mem_plot = gr.Plot(show_label=False, elem_id="mem-plot")
                    with gr.Row():
                        ui.params_plot = gr.Plot(show_label=False, elem_id="params-plot", min_width=300)
                        ui.sweep_plot = gr.Plot(show_label=False, elem_id="sweep-plot", min_width=300)
            ui.rec_key = gr.State(None)
            ui.ctx = gr.State(None)  # the earlier steps' answers as plan fields, set on entering the review
            ui.shown = gr.State({})  # the figures the page shows (server-side), so unchanged ones are not resent
            ui.next4 = gr.Button("Next: launch →", variant="primary", elem_classes="lp-next", elem_id="next4")

        # 5 ------------------------------------------------------------------------------
        with gr.Tab("5 · Launch", id="s5") as ui.tab5:
            gr.Markdown("### Launch the job")
            with gr.Column(elem_classes="lp-panel lp-narrow"):
                ui.name = gr.Textbox(label="Run name", info=TrainingPlan.help("name"), placeholder="optional",
                                     elem_id="run-name")
                ui.launch_summary = gr.HTML(elem_id="launch-summary")
                ui.override = gr.Checkbox(False, label="Launch anyway", visible=False, elem_id="launch-anyway")
                ui.launch_btn = gr.Button("Launch training", variant="primary", size="lg", elem_id="launch")
                ui.launch_notice = gr.HTML(elem_id="launch-notice")
                gr.HTML(run_elsewhere.after_training_html())

    _wire(ui)
    return ui


def _goto(step: str):
    return lambda: gr.Tabs(selected=step)


def _wire(ui: SimpleNamespace) -> None:
    ui.context_inputs = [ui.model, ui.difficulty, ui.dataset, ui.rows, ui.hw_kind, ui.gpu, ui.budget, ui.name]
    ui.plan_inputs = ui.context_inputs + [ui.form[f] for f in review.FORM_FIELDS]
    for wire_step in (_wire_model, _wire_data, _wire_hardware, _wire_review, _wire_launch):
        wire_step(ui)


def _wire_model(ui: SimpleNamespace) -> None:
    """Step 1: the catalog, a typed id, and the facts of the model it names."""
    ui.catalog.input(lambda key: key, ui.catalog, ui.model).then(
        lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.check_model.click(lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.model.submit(lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.next1.click(_goto("s2"), None, ui.steps)


def _wire_data(ui: SimpleNamespace) -> None:
    """Step 2: the data check, run when the step opens and on every change of source."""
    data_outputs = [ui.dataset, ui.rows, ui.lengths, ui.data_summary, ui.histogram, ui.examples]

    def check(kind, skill, upload, model, seq_len, progress=gr.Progress()):  # noqa: B008 - how Gradio injects it
        # a fresh install converts the embedded model first: show how far, not a bare spinner
        first_run.wait_for_model(model, lambda fraction, text: progress(fraction, desc=text))
        if kind == "upload" and not upload:  # nothing chosen yet (or the file removed): no report, no error
            return None, None, None, html.notice("Choose a file to check it: " + ", ".join(steps.UPLOAD_TYPES) + ".",
                                                 "info"), charts.empty("Token lengths", "Check the data to see token "
                                                                       "lengths", 280), ""
        v = steps.check_data_view(kind, skill, upload, model, seq_len or 512)
        return v["dataset"], v["rows"], v["lengths"], v["summary"], v["histogram"], v["examples"]

    data_inputs = [ui.source, ui.skill, ui.upload, ui.model, ui.form["seq_len"]]
    # progress (and the first run's conversion message) on the chart, the one output with room for it
    on = {"show_progress_on": ui.histogram}
    ui.next1.click(check, data_inputs, data_outputs, **on)
    ui.check_data.click(check, data_inputs, data_outputs, **on)
    ui.skill.input(steps.skill_description, ui.skill, ui.skill_info).then(check, data_inputs, data_outputs, **on)
    ui.upload.upload(check, data_inputs, data_outputs, **on)
    ui.source.input(lambda k: (gr.update(visible=k == "demo"), gr.update(visible=k == "demo"),
                               gr.update(visible=k == "upload")),
                    ui.source, [ui.skill, ui.skill_info, ui.upload]).then(check, data_inputs, data_outputs)
    ui.upload.clear(check, data_inputs, data_outputs)  # removing the file removes its report too
    ui.next2.click(_goto("s3"), None, ui.steps)


def _wire_hardware(ui: SimpleNamespace) -> None:
    """Step 3: GPU from the catalog, a memory figure, or the CPU."""
    ui.hw_kind.input(lambda k: (gr.update(visible=k == "gpu"), gr.update(visible=k == "vram")),
                     ui.hw_kind, [ui.gpu, ui.budget])


def _wire_review(ui: SimpleNamespace) -> None:
    """Step 4: recommend when the earlier answers changed, then estimate on every change."""
    form = [ui.form[f] for f in review.FORM_FIELDS]
    # The estimate comes in two requests: the numbers (verdict, tiles), then the charts that changed.
    # The earlier steps' answers wait server-side in ui.ctx, so a change sends the form values only;
    # a bad value's one line goes in place, beside the field, and the charts say what to fix.
    numbers_outputs = [ui.verdict, ui.summary_plot, ui.main_error, ui.advanced_error]
    charts_outputs = [ui.mem_plot, ui.params_plot, ui.sweep_plot, ui.shown]

    def enter_review(*args):
        ctx_values, key = args[:-1], args[-1]
        try:
            ctx = context_from(*ctx_values)
        except UserError as exc:
            return [gr.skip()] * len(form) + [html.error_notice(exc), key, None]
        new_key = repr(sorted((k, v) for k, v in ctx.items() if k != "name"))
        if new_key == key:
            return [gr.skip()] * len(form) + [gr.skip(), key, ctx]
        try:
            rec, plan = review.recommend_for(ctx)
        except Exception as exc:
            return [gr.skip()] * len(form) + [html.error_notice(exc), key, ctx]
        return review.values_of(plan) + [review.reasons_html(rec), new_key, ctx]

    def plan_of(ctx, form_values):
        if ctx is None:
            raise UserError("dataset", "check the data in step 2 first (pick a demo skill or upload a file)")
        return review.plan_from_values(ctx, list(form_values))

    def update_numbers(ctx, lengths, *form_values):
        try:
            plan = plan_of(ctx, form_values)
            v = review.numbers_view(plan, lengths)
        except Exception as exc:
            verdict, _, summary, _, main, advanced = refusals.invalid_view(exc)
            return [verdict, summary, main, advanced]
        return [v["verdict"] + refusals.warnings_html(plan), v["summary"], "", ""]

    def update_charts(ctx, lengths, shown, *form_values):
        try:
            plan = plan_of(ctx, form_values)
            figures = {**review.charts_view(plan, lengths), "sweep": review.sweep_view(plan)}
        except Exception as exc:  # charts of another plan must not stay beside the message
            _, memory, _, params, _, _ = refusals.invalid_view(exc)
            return [memory, params, refusals.sweep_placeholder(exc), {}]
        out, now = [], dict(shown or {})
        for key in ("memory", "params", "sweep"):  # a figure equal to the one shown costs the browser nothing
            spec = figures[key].to_json()
            out.append(gr.skip() if now.get(key) == spec else figures[key])
            now[key] = spec
        return out + [now]

    review_in = ui.context_inputs[:-1] + [ui.name, ui.rec_key]
    numbers_in, charts_in = [ui.ctx, ui.lengths] + form, [ui.ctx, ui.lengths, ui.shown] + form
    for event in (ui.next3.click(_goto("s4"), None, ui.steps), ui.tab4.select(lambda: None, None, None)):
        event.then(enter_review, review_in, form + [ui.reasons, ui.rec_key, ui.ctx], show_progress="minimal").then(
            update_numbers, numbers_in, numbers_outputs, show_progress="hidden").then(
            update_charts, charts_in, charts_outputs, show_progress="hidden")
    for control in form:
        # queue=False: direct requests, no queue round trips, for the < 150 ms change-to-numbers budget
        control.input(update_numbers, numbers_in, numbers_outputs, show_progress="hidden",
                      trigger_mode="always_last", queue=False).then(
            update_charts, charts_in, charts_outputs, show_progress="hidden", queue=False)


def _wire_launch(ui: SimpleNamespace) -> None:
    """Step 5: the summary, the override for a plan that does not fit, and the launch."""
    def summary(*values):
        ctx_values, form_values = values[:len(ui.context_inputs)], values[len(ui.context_inputs):]
        try:
            plan = review.plan_from_values(context_from(*ctx_values), list(form_values))
        except Exception as exc:
            return html.error_notice(exc), gr.update(visible=False, value=False)
        rows = [("Base model", plan.model), ("Data", plan.dataset), ("Method", plan.method),
                ("Rank / alpha", f"{plan.r} / {plan.alpha:g}"), ("Targets", plan.targets),
                ("Batch × accumulation", f"{plan.batch_size} × {plan.grad_accum}"),
                ("Sequence length", plan.seq_len),
                ("Length", f"{plan.max_steps} steps" if plan.max_steps else f"{plan.epochs:g} epochs"),
                ("Hardware", plan.gpu or f"{plan.budget_gb:g} GiB GPU")]
        try:
            from engine.estimate.combined import estimate

            est = estimate(plan)
            rows.append(("Memory", est.memory.verdict))
            if est.time:
                rows.append(("Estimated time", f"{units.human_seconds(est.time.seconds)} on {est.time.device}"))
            consequence = refusals.misfit(plan)
        except Exception as exc:
            return html.facts_table(rows) + html.error_notice(exc), gr.update(visible=False, value=False)
        override = gr.update(visible=consequence is not None, label=consequence or "Launch anyway", value=False)
        return html.facts_table(rows) + refusals.warnings_html(plan), override

    launch_view = [ui.launch_summary, ui.override]
    ui.next4.click(_goto("s5"), None, ui.steps).then(summary, ui.plan_inputs, launch_view)
    ui.tab5.select(summary, ui.plan_inputs, launch_view)

    def launch(*values):
        ctx_values, form_values = values[:len(ui.context_inputs)], values[len(ui.context_inputs):-1]
        try:
            plan = review.plan_from_values(context_from(*ctx_values), list(form_values))
            refusal = refusals.launch_refusal(plan, bool(values[-1]))
        except Exception as exc:
            return None, html.error_notice(exc)
        if refusal:
            return None, refusal
        return steps.launch(plan)

    ui.launch = launch
    ui.launch_inputs = ui.plan_inputs + [ui.override]  # the plan, and the "launch anyway" box
