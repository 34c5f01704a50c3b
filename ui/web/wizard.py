"""The wizard: five steps from a base model to a launched job.

Layout and event wiring only; the logic lives in ui/web/steps.py (model, data, hardware,
launch) and ui/web/review.py (recommendation and live estimate). The wizard keeps its
answers in its controls; once launched, the job lives in the database.

Handlers take the page's values by name (Gradio's `inputs_kwargs`): the earlier steps' answers
under ANSWERS, the review form's under its plan field names, never a slice of `*values`.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from engine.errors import UserError
from engine.estimate.combined import headline
from engine.plan import DIFFICULTY_QUESTION, TrainingPlan
from ui.web import charts, first_run, html, live_numbers, refusals, review, run_elsewhere, steps, sweep_page

# The earlier steps' answers, by the names handlers receive them under.
ANSWERS = ("model", "difficulty", "dataset", "rows", "hw_kind", "gpu", "budget", "name", "objective")


def context_from(model, difficulty, dataset, rows, hw_kind, gpu, budget, name, objective="sft") -> dict:
    """The earlier steps' answers as plan fields; raises UserError naming the missing one."""
    if not dataset:
        raise UserError(
            "dataset",
            "check the data in step 2 first: no data has passed its check yet (pick a "
            "demo skill, or upload a file and fix what the check lists)",
        )
    ctx = {
        "model": (model or "default").strip(),
        "difficulty": difficulty or "balanced",
        "dataset": dataset,
        "dataset_rows": int(rows) if rows else None,
        "name": (name or "").strip() or None,
        "objective": objective or "sft",
    }
    ctx.update(steps.hardware_context(hw_kind, gpu, budget))
    return ctx


def plan_from(values: dict, kept: dict | None = None) -> TrainingPlan:
    """The plan the page shows, from its values by name (ANSWERS and the form's plan fields)."""
    ctx = context_from(**{k: values.get(k) for k in ANSWERS})
    return review.plan_from_values(ctx, {f: values[f] for f in review.FORM_FIELDS if f in values}, kept)


def _controls(form: dict, fields: list[str], per_row: int = 2) -> None:
    """Plan-field controls, two to a row so labels and help texts stay readable."""
    for i in range(0, len(fields), per_row):
        with gr.Row(equal_height=False):
            for f in fields[i : i + per_row]:
                form[f] = review.make_control(f)


# A catalog card looks clickable, so a click (or Enter) picks its model, as the dropdown beside it does.
CARD_CLICK = """element.querySelectorAll('.lp-card[data-key]').forEach(card => {
  const pick = () => trigger('click', {key: card.dataset.key});
  card.addEventListener('click', pick);
  card.addEventListener('keydown', e => { if (e.key === 'Enter') pick(); });
});"""


def card_key(evt: gr.EventData) -> str:
    """The model key of the catalog card clicked."""
    return getattr(evt, "key", None) or gr.skip()


# --- layout: one function per step ------------------------------------------------------


def build() -> SimpleNamespace:
    """Render the wizard inside the current Blocks context and wire its events."""
    ui = SimpleNamespace()
    with gr.Tabs(selected="s1", elem_id="wizard-steps") as ui.steps:
        for step in (_model_step, _data_step, _hardware_step, _review_step, _launch_step):
            step(ui)
    ui.answers = {name: getattr(ui, name) for name in ANSWERS}  # handlers' inputs, by name
    ui.plan_inputs = {**ui.answers, **ui.form}
    _wire(ui)
    return ui


def _model_step(ui: SimpleNamespace) -> None:
    with gr.Tab("1 · Base model", id="s1"):
        gr.Markdown(
            "### Which model do you start from?\nThe embedded default is small enough to train on a "
            "CPU. Pick a catalog model to see what a larger run costs, or type your own."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                ui.cards = gr.HTML(steps.catalog_cards(), elem_classes="lp-cards-wrap", js_on_load=CARD_CLICK)
            with gr.Column(scale=2, elem_classes="lp-panel"):
                ui.catalog = gr.Dropdown(
                    steps.catalog_choices(), value=None, label="From the catalog", info="Fills the field below."
                )
                ui.model = gr.Textbox(
                    steps.default_model(), label="Base model", elem_id="model-box", info=TrainingPlan.help("model")
                )
                ui.check_model = gr.Button("Check model", size="md")
                ui.facts = gr.HTML(elem_id="model-facts")
        ui.next1 = gr.Button("Next: task and data →", variant="primary", elem_classes="lp-next", elem_id="next1")


def _data_step(ui: SimpleNamespace) -> None:
    skills = steps.skill_choices()
    first_skill = skills[0][1] if skills else None
    with gr.Tab("2 · Task and data", id="s2"):
        gr.Markdown("### What should the model learn?")
        ui.difficulty = gr.Radio(
            steps.DIFFICULTY_CHOICES,
            value="simple" if first_skill else "balanced",
            label="How hard is the task?",
            info=DIFFICULTY_QUESTION + ".",
            elem_id="difficulty",
        )
        # what the data teaches (the plan's objective); the data check switches it to match the data
        ui.objective = gr.Radio(
            steps.OBJECTIVE_CHOICES,
            value="sft",
            label=steps.OBJECTIVE_QUESTION,
            info=TrainingPlan.help("objective"),
            elem_id="objective",
        )
        gr.HTML(steps.OBJECTIVE_HELP)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, elem_classes="lp-panel"):
                ui.source = gr.Radio(
                    [("A demo skill", "demo"), ("My own file", "upload")],
                    value="demo" if first_skill else "upload",
                    label="Training data",
                    info=TrainingPlan.help("dataset"),
                    elem_id="data-source",
                )
                ui.skill = gr.Dropdown(
                    skills, value=first_skill, label="Demo skill", elem_id="skill", visible=bool(first_skill)
                )
                ui.skill_info = gr.HTML(steps.skill_description(first_skill))
                # No file_types: Gradio would refuse other files with a bare "Error" toast; the data
                # check refuses them in place instead, naming the file and what is accepted.
                ui.upload = gr.File(
                    label="Upload a file (.jsonl, .json, .csv, .parquet, .txt)",
                    elem_id="upload",
                    visible=not first_skill,
                )
                ui.check_data = gr.Button("Check data", size="md", elem_id="check-data")
            with gr.Column(scale=3):
                ui.data_summary = gr.HTML(elem_id="data-summary")
                ui.histogram = gr.Plot(
                    charts.empty("Token lengths", "Check the data to see token lengths", 280),
                    show_label=False,
                    elem_id="token-hist",
                )
        with gr.Accordion("Formatted examples (with the chat template applied)", open=False):
            ui.examples = gr.HTML(elem_id="examples")
        ui.dataset = gr.State(f"demo:{first_skill}" if first_skill else None)
        ui.rows = gr.State(None)
        ui.lengths = gr.State(None)  # the checked data's token lengths, for the expected memory
        ui.label_share = gr.State(None)  # the share of those tokens the loss is on (the answers)
        ui.next2 = gr.Button("Next: hardware →", variant="primary", elem_classes="lp-next", elem_id="next2")


def _hardware_step(ui: SimpleNamespace) -> None:
    hw_kind, hw_gpu, hw_budget = steps.detect_hardware()
    with gr.Tab("3 · Hardware", id="s3"):
        gr.Markdown("### Where will it train?")
        with gr.Column(elem_classes="lp-panel lp-narrow"):
            ui.hw_kind = gr.Radio(steps.HARDWARE, value=hw_kind, label="Hardware", elem_id="hw-kind")
            ui.gpu = gr.Dropdown(
                steps.gpu_choices(),
                value=hw_gpu,
                label="GPU",
                info=TrainingPlan.help("gpu"),
                visible=hw_kind == "gpu",
                elem_id="gpu",
            )
            ui.budget = gr.Number(
                hw_budget,
                label="GPU memory (GB)",
                info=TrainingPlan.help("budget_gb"),
                visible=hw_kind == "vram",
                minimum=0,
                elem_id="budget",
            )
            gr.HTML(
                '<div class="lp-hint">The estimate in the next step checks the plan against this memory '
                "before anything runs.</div>"
            )
        ui.next3 = gr.Button("Next: review →", variant="primary", elem_classes="lp-next", elem_id="next3")


def _review_step(ui: SimpleNamespace) -> None:
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
        ui.valid = gr.State({})  # the form's last valid values: what a refused box goes back to
        ui.shown = gr.State({})  # the figures the page shows (server-side), so unchanged ones are not resent
        ui.search = sweep_page.search_panel()  # a budgeted search around these settings (ui/web/sweep_page.py)
        ui.next4 = gr.Button("Next: launch →", variant="primary", elem_classes="lp-next", elem_id="next4")


def _launch_step(ui: SimpleNamespace) -> None:
    with gr.Tab("5 · Launch", id="s5") as ui.tab5:
        gr.Markdown("### Launch the job")
        with gr.Column(elem_classes="lp-panel lp-narrow"):
            ui.name = gr.Textbox(
                label="Run name", info=TrainingPlan.help("name"), placeholder="optional", elem_id="run-name"
            )
            ui.launch_summary = gr.HTML(elem_id="launch-summary")
            ui.override = gr.Checkbox(False, label="Launch anyway", visible=False, elem_id="launch-anyway")
            ui.launch_btn = gr.Button("Launch training", variant="primary", size="lg", elem_id="launch")
            ui.launch_notice = gr.HTML(elem_id="launch-notice")
            gr.HTML(run_elsewhere.after_training_html())


# --- wiring: one function per step --------------------------------------------------------


def _goto(step: str):
    return lambda: gr.Tabs(selected=step)


def _wire(ui: SimpleNamespace) -> None:
    for wire_step in (_wire_model, _wire_data, _wire_hardware, _wire_review, _wire_launch):
        wire_step(ui)
    names = list(ui.plan_inputs)
    sweep_page.wire_search(
        ui.search, [ui.plan_inputs[n] for n in names], lambda *values: plan_from(dict(zip(names, values)))
    )


def _wire_model(ui: SimpleNamespace) -> None:
    """Step 1: the catalog, a typed id, and the facts of the model it names."""
    ui.catalog.input(lambda key: key, ui.catalog, ui.model).then(lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.cards.click(card_key, None, ui.model).then(lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.check_model.click(lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.model.submit(lambda m: steps.model_facts(m)[0], ui.model, ui.facts)
    ui.next1.click(_goto("s2"), None, ui.steps)


def check_data(kind, skill, upload, model, seq_len, objective="sft", progress=gr.Progress()):  # noqa: B008 - how Gradio injects it
    """Step 2's data check: [dataset, rows, lengths, label share, summary, histogram, examples, objective]."""
    # a fresh install converts the embedded model first: show how far, not a bare spinner
    first_run.wait_for_model(model, lambda fraction, text: progress(fraction, desc=text))
    if kind == "upload" and not upload:  # nothing chosen yet (or the file removed): no report, no error
        return [
            None,
            None,
            None,
            None,
            html.notice("Choose a file to check it: " + ", ".join(steps.UPLOAD_TYPES) + ".", "info"),
            charts.empty("Token lengths", "Check the data to see token lengths", 280),
            "",
            gr.skip(),
        ]
    v = steps.check_data_view(kind, skill, upload, model, seq_len or 512)
    return [
        v["dataset"],
        v["rows"],
        v["lengths"],
        v.get("label_share"),
        v["summary"],
        v["histogram"],
        v["examples"],
        steps.objective_of(v.get("format"), objective),
    ]


def _wire_data(ui: SimpleNamespace) -> None:
    """Step 2: the data check, run when the step opens and on every change of source."""
    data_outputs = [
        ui.dataset,
        ui.rows,
        ui.lengths,
        ui.label_share,
        ui.data_summary,
        ui.histogram,
        ui.examples,
        ui.objective,
    ]
    data_inputs = {
        "kind": ui.source,
        "skill": ui.skill,
        "upload": ui.upload,
        "model": ui.model,
        "seq_len": ui.form["seq_len"],
        "objective": ui.objective,
    }
    # progress (and the first run's conversion message) on the chart, the one output with room for it
    on = {"inputs_kwargs": data_inputs, "show_progress_on": ui.histogram}
    ui.next1.click(check_data, None, data_outputs, **on)
    ui.check_data.click(check_data, None, data_outputs, **on)
    ui.skill.input(steps.skill_description, ui.skill, ui.skill_info).then(check_data, None, data_outputs, **on)
    ui.upload.upload(check_data, None, data_outputs, **on)
    ui.source.input(
        lambda k: (gr.update(visible=k == "demo"), gr.update(visible=k == "demo"), gr.update(visible=k == "upload")),
        ui.source,
        [ui.skill, ui.skill_info, ui.upload],
    ).then(check_data, None, data_outputs, inputs_kwargs=data_inputs)
    ui.upload.clear(check_data, None, data_outputs, inputs_kwargs=data_inputs)  # no file, no report
    # A failed check keeps the wizard on step 2, where its report names the row (steps.check_data_view)
    ui.next2.click(lambda dataset: gr.Tabs(selected="s3" if dataset else "s2"), ui.dataset, ui.steps)


def _wire_hardware(ui: SimpleNamespace) -> None:
    """Step 3: GPU from the catalog, a memory figure, or the CPU."""
    ui.hw_kind.input(
        lambda k: (gr.update(visible=k == "gpu"), gr.update(visible=k == "vram")), ui.hw_kind, [ui.gpu, ui.budget]
    )


# --- step 4's handlers: plain functions of named values, so tests call them as the page does ---


def enter_review(rec_key, **answers) -> list:
    """Recommend when the earlier answers changed: [form values (FORM_FIELDS order)..., reasons, key, ctx]."""
    keep = [gr.skip()] * len(review.FORM_FIELDS)
    try:
        ctx = context_from(**answers)
    except UserError as exc:
        return keep + [html.error_notice(exc), rec_key, None]
    new_key = repr(sorted((k, v) for k, v in ctx.items() if k != "name"))
    if new_key == rec_key:
        return keep + [gr.skip(), rec_key, ctx]
    try:
        rec, plan = review.recommend_for(ctx)
    except Exception as exc:
        return keep + [html.error_notice(exc), rec_key, ctx]
    return review.values_of(plan) + [review.reasons_html(rec), new_key, ctx]


def _review_plan(ctx, form: dict, kept: dict | None = None) -> TrainingPlan:
    if ctx is None:
        raise UserError(
            "dataset",
            "check the data in step 2 first: no data has passed its check yet (pick a "
            "demo skill, or upload a file and fix what the check lists)",
        )
    return review.plan_from_values(ctx, form, kept)


def update_numbers(ctx, lengths, label_share, valid, **form) -> list:
    """[verdict, tiles, main panel's line, Advanced panel's line, last valid form values].

    Also the answer of the page's own endpoint (ui/web/live_numbers.py), so the tiles carry their plan's key."""
    try:
        plan = _review_plan(ctx, form, valid)
        v = review.numbers_view(plan, lengths, label_share)
    except Exception as exc:
        verdict, _, summary, _, main, advanced = refusals.invalid_view(exc)
        return [verdict, summary, main, advanced, gr.skip()]
    shown = review.form_of(plan)
    tiles = live_numbers.tagged(v["summary"], live_numbers.remember(ctx, lengths, label_share, shown))
    return [v["verdict"] + refusals.warnings_html(plan), tiles, "", "", shown]


def update_charts(ctx, lengths, label_share, shown, **form) -> list:
    """[memory, parameters, sweep, the figures now shown]; a figure equal to the one shown is skipped."""
    try:
        plan = _review_plan(ctx, form)
        figures = {**review.charts_view(plan, lengths, label_share), "sweep": review.sweep_view(plan)}
    except Exception as exc:  # charts of another plan must not stay beside the message
        _, memory, _, params, _, _ = refusals.invalid_view(exc)
        return [memory, params, refusals.sweep_placeholder(exc), {}]
    out, now = [], dict(shown or {})
    for key in ("memory", "params", "sweep"):  # a figure equal to the one shown costs the browser nothing
        spec = figures[key].to_json()
        out.append(gr.skip() if now.get(key) == spec else figures[key])
        now[key] = spec
    return out + [now]


def restore(field: str):
    """On leaving a number box that holds no number, put back the plan's last valid value (the refusal
    line said which), so the box shows what the plan has."""

    def handler(value, valid):
        if value not in (None, "") or field in review.EMPTY_MEANS_NONE or field not in (valid or {}):
            return gr.skip()
        return valid[field]

    return handler


def _wire_review(ui: SimpleNamespace) -> None:
    """Step 4: recommend when the earlier answers changed, then estimate on every change.

    The estimate comes in two requests: the numbers (verdict, tiles), then the charts that changed.
    The earlier steps' answers wait server-side in ui.ctx, so a change sends the form values only;
    a bad value's one line goes in place, beside the field, and the charts say what to fix."""
    form_outputs = [ui.form[f] for f in review.FORM_FIELDS]
    data = {"ctx": ui.ctx, "lengths": ui.lengths, "label_share": ui.label_share}
    numbers = {
        "fn": update_numbers,
        "inputs": None,
        "inputs_kwargs": {**data, "valid": ui.valid, **ui.form},
        "outputs": [ui.verdict, ui.summary_plot, ui.main_error, ui.advanced_error, ui.valid],
        "show_progress": "hidden",
    }
    charts_ = {
        "fn": update_charts,
        "inputs": None,
        "inputs_kwargs": {**data, "shown": ui.shown, **ui.form},
        "outputs": [ui.mem_plot, ui.params_plot, ui.sweep_plot, ui.shown],
        "show_progress": "hidden",
    }
    entered = {
        "fn": enter_review,
        "inputs": None,
        "inputs_kwargs": {"rec_key": ui.rec_key, **ui.answers},
        "outputs": form_outputs + [ui.reasons, ui.rec_key, ui.ctx],
        "show_progress": "minimal",
    }
    for event in (ui.next3.click(_goto("s4"), None, ui.steps), ui.tab4.select(lambda: None, None, None)):
        event.then(**entered).then(**numbers).then(**charts_)
    for field, control in ui.form.items():
        # The page's script paints the numbers first (ui/web/live_numbers.py); this event waits for that
        # paint, then brings the same numbers, the last valid values and the charts. queue=False: direct
        # requests, no queue round trips.
        control.input(**numbers, js=live_numbers.AFTER_PAINT_JS, trigger_mode="always_last", queue=False).then(
            **charts_, queue=False
        )
        if review.field_kind(field)[0] in ("int", "float"):
            # the box shows the plan's value again, and the refusal line goes with the numbers' redraw
            control.blur(restore(field), [control, ui.valid], control, show_progress="hidden", queue=False).then(
                **numbers, queue=False
            )


# --- step 5 ----------------------------------------------------------------------------------


def launch_summary(lengths=None, label_share=None, **values) -> list:
    """[summary HTML, the override box, the launch notice]: the plan and the same estimate the review showed
    (same function, same data); a notice of an earlier launch goes, it was about another plan."""
    try:
        plan = plan_from(values)
    except Exception as exc:
        return [html.error_notice(exc), gr.update(visible=False, value=False), ""]
    rows = [
        ("Base model", plan.model),
        ("Data", plan.dataset),
        ("Method", plan.method),
        ("Rank / alpha", f"{plan.r} / {plan.alpha:g}"),
        ("Targets", plan.targets),
        ("Batch × accumulation", f"{plan.batch_size} × {plan.grad_accum}"),
        ("Sequence length", plan.seq_len),
        ("Length", f"{plan.max_steps} steps" if plan.max_steps else f"{plan.epochs:g} epochs"),
        ("Hardware", plan.gpu or f"{plan.budget_gb:g} GiB GPU"),
    ]
    try:
        est = review.estimate_of(plan, lengths, label_share)
        rows.append(("Memory", est.memory.verdict))
        rows += [(k.capitalize(), v) for k, v in review.headline_tiles(headline(est), plan.seq_len).items()]
        consequence = refusals.misfit(plan)
    except Exception as exc:
        return [html.facts_table(rows) + html.error_notice(exc), gr.update(visible=False, value=False), ""]
    override = gr.update(visible=consequence is not None, label=consequence or "Launch anyway", value=False)
    return [html.facts_table(rows) + refusals.warnings_html(plan), override, ""]


def launch(override=False, **values) -> tuple:
    """(job id or None, notice): the plan on the page, refused in one line when it cannot start."""
    try:
        plan = plan_from(values)
        refusal = refusals.launch_refusal(plan, bool(override))
    except Exception as exc:
        return None, html.error_notice(exc)
    if refusal:
        return None, refusal
    return steps.launch(plan, anyway=bool(override))


def _wire_launch(ui: SimpleNamespace) -> None:
    """Step 5: the summary, the override for a plan that does not fit, and the launch."""
    summary = {
        "fn": launch_summary,
        "inputs": None,
        "inputs_kwargs": {"lengths": ui.lengths, "label_share": ui.label_share, **ui.plan_inputs},
        "outputs": [ui.launch_summary, ui.override, ui.launch_notice],
    }
    ui.next4.click(_goto("s5"), None, ui.steps).then(**summary)
    ui.tab5.select(**summary)
    # a launch's notice is about the plan it launched: it goes when the plan or its data changes
    # in the page only (js, no request): an edit's frame is the numbers' (ui/web/live_numbers.py)
    for changed in (ui.name.input, ui.dataset.change, *(control.input for control in ui.form.values())):
        changed(None, None, ui.launch_notice, js="() => ''", show_progress="hidden", queue=False)
    ui.launch = launch
    ui.launch_kwargs = {**ui.plan_inputs, "override": ui.override}  # the plan, and the "launch anyway" box
