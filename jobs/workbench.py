"""Library entries put to work: generate, merge, compose, score retention.

The glue between the adapter library (rows) and engine.adapters (models): the CLI and
the playground both call these, so they behave the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine import paths
from engine.adapters import compose as compose_mod
from engine.adapters import folder, recipe
from engine.adapters import host as host_mod
from engine.adapters import merge as merge_mod
from engine.adapters import retention as retention_mod
from engine.data import demo
from engine.errors import UserError
from engine.model import catalog, default_model
from engine.train import resolved
from jobs import library, store
from jobs.tables import JobStatus


def host_for(
    entries: list[library.Adapter] | library.Adapter, base_model: str | None = None, timings: dict | None = None
):
    """The process's AdapterHost for these entries' base, with each entry loaded (name = entry name).

    `timings`, if given, receives the seconds each load took (0 for one already loaded).
    """

    entries = [entries] if isinstance(entries, library.Adapter) else list(entries)
    base = base_model or (entries[0].base_model if entries else None)
    if base is None:
        raise UserError("base_model", "pick a base model or at least one adapter")
    foreign = [e.name for e in entries if not same_base(e.base_model, base)]
    if foreign:
        raise UserError(
            "adapter", f"{', '.join(foreign)} belong to another base than {base}; pick adapters of one base"
        )
    host = host_mod.shared(base)
    if len(entries) > host.max_loaded:
        raise UserError(
            "adapters",
            f"{len(entries)} adapters at once, but at most {host.max_loaded} stay loaded (LORAPILOT_MAX_ADAPTERS)",
        )
    for e in entries:
        seconds = host.load(e.name, e.path)
        if timings is not None:
            timings[e.name] = seconds
    return host


def same_base(a: str, b: str) -> bool:
    return a == b or _base_key(a) == _base_key(b)


def _base_key(spec: str) -> str:
    """What a base spec points at, without loading or converting anything (lists call this often)."""

    if spec == "default":
        return str((paths.subdir("models") / default_model.FOLDER_NAME).resolve())
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    entry = catalog.find_model(spec)
    return entry.hub_id if entry else spec


def generate(ref, prompt: str, base: bool = False, max_new_tokens: int = 128, **settings) -> dict:
    """{'adapter': text, 'base': text (with base=True), 'switch_seconds': ...} for one library entry."""
    entry = library.find(ref)
    host = host_for(entry)
    out = {"adapter_name": entry.name, "base_model": entry.base_model}
    out["switch_seconds"] = host.activate(entry.name)
    out["adapter"] = "".join(host.generate(prompt, adapter=entry.name, max_new_tokens=max_new_tokens, **settings))
    if base:
        out["base"] = "".join(host.generate(prompt, adapter=None, max_new_tokens=max_new_tokens, **settings))
    return out


def bases() -> list[str]:
    """Base models with adapters in the library, the embedded default first."""
    found = sorted({a.base_model for a in library.list_adapters()} - {"default"})
    return ["default", *found]


def merged_dir(name: str) -> Path:
    return paths.subdir("merged") / name


def merge(ref, out: str | None = None) -> Path:
    entry = library.find(ref)
    target = Path(out).expanduser() if out else merged_dir(entry.name)
    return merge_mod.merge(
        entry.path,
        entry.base_model,
        target,
        adapter_name=entry.name,
        method="qlora" if entry.method == "qlora" else "lora",
    )


def compose(
    refs: list[str], weights: list[float], combination: str, name: str, density: float | None = None
) -> library.Adapter:
    """A new library entry combining `refs`, with its lineage; nothing is left behind on failure."""

    name = library.check_name(name)
    if any(a.name == name for a in library.list_adapters()):
        raise UserError("name", f"an adapter named '{name}' exists; pick another with --name")
    entries = [library.find(r) for r in refs]
    if len({e.id for e in entries}) != len(entries):
        raise UserError("adapters", "the same adapter is named twice; compose different adapters")
    base = entries[0].base_model
    foreign = [e for e in entries[1:] if not same_base(e.base_model, base)]
    if foreign:
        raise UserError(
            "adapters",
            f"'{foreign[0].name}' is an adapter of {foreign[0].base_model} but "
            f"'{entries[0].name}' is one of {base}; only adapters of one base compose",
        )
    density = compose_mod.check([e.r for e in entries], weights, combination, density)
    host = host_for(entries)  # the playground's host: the sources are often loaded on it already
    dest = library._unique_dir(name)
    compose_mod.compose(host, [(e.name, e.path) for e in entries], weights, combination, dest, name, density=density)
    try:
        info = folder.inspect(dest, base=base)
        lineage = {
            "sources": [{"id": e.id, "name": e.name, "skill": e.skill} for e in entries],
            "weights": list(weights),
            "combination": combination,
            "density": density,
        }
        return library.add(
            library.Adapter(
                name=name,
                base_model=base,
                path=str(dest),
                method="composed",
                r=info.r,
                alpha=info.alpha,
                targets=",".join(info.targets),
                bytes=info.bytes,
                description=f"{combination} of {', '.join(e.name for e in entries)} (weights "
                f"{', '.join(f'{w:g}' for w in weights)})",
                lineage_json=json.dumps(lineage),
            )
        )
    except BaseException:
        host.unload(name)
        shutil.rmtree(dest, ignore_errors=True)
        raise


def retention(ref, progress=None) -> list[dict]:
    """The skill-retention table of a composed entry (its sources with a known demo skill); `progress(text)`
    hears what is scored, in words."""

    entry = library.find(ref)
    sources = entry.lineage.get("sources") or []
    if not sources:
        raise UserError(
            "adapter", f"'{entry.name}' is not a composition; retention compares a composition with its sources"
        )
    found = [library.find(s["id"]) for s in sources]
    host = host_for([entry, *found])
    known: dict[retention_mod.Pass, float] = {}
    for source in found:
        known |= job_scores(source, host)
    return retention_mod.table(host, entry.name, [(e.name, e.skill) for e in found], progress, known=known)


def job_scores(entry: library.Adapter, host) -> dict:
    """The figures the entry's training job recorded, as retention passes, where they mean what retention
    would score: {Pass(None, skill): base %, Pass(entry.name, skill): adapter %}, or {}.

    A demo job scores the base and its adapter on the skill's whole test split, greedily with the skill's
    answer length (engine.evaluate.heldout), as retention does. They count only when the job answered every
    row (no time limit cut it), ran on this device in the host's precision on the same base, with plain LoRA
    (QLoRA scored a 4-bit base; the host serves its compute precision), and the adapter is the job's own
    folder. What can still differ is rounding: the job scored inside its trainer, which may run the LoRA
    matmuls under autocast, so a row whose greedy token is a near tie could go the other way here; these are
    the figures the library shows for the adapter, so the table agrees with it.
    """

    if entry.job_id is None or entry.method != "lora" or not entry.skill or entry.skill not in demo.SKILLS:
        return {}
    try:
        job = store.get_job(entry.job_id)
    except UserError:  # the job was deleted
        return {}
    evaluation = store.job_evaluation(job) or {}
    record = resolved.read(store.job_dir(job.id))
    plan = store.job_plan(job)
    usable = (
        job.status == JobStatus.SUCCEEDED
        and record is not None
        and record.eval_source == "demo"
        and record.device == host.model.device.type
        and record.precision == _precision(host.model.dtype)
        and evaluation.get("rows") == evaluation.get("generated_rows") == len(demo.records(entry.skill, "test"))
        and demo.skill_of(plan) == demo.get(entry.skill)
        and job.artifact_dir is not None
        and Path(job.artifact_dir).resolve() == Path(entry.path).resolve()
        and same_base(plan.model, host.base_model)
    )
    base = (evaluation.get("base") or {}).get("exact_match")
    adapter = (evaluation.get("adapter") or {}).get("exact_match")
    if not usable or base is None or adapter is None:
        return {}
    return {retention_mod.Pass(None, entry.skill): base, retention_mod.Pass(entry.name, entry.skill): adapter}


def _precision(dtype) -> str:
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


def recipe_adapter(ref) -> tuple[str, Path]:
    """(name, folder) of an adapter given as a folder saved by PEFT or as a library name/id."""
    folder = Path(str(ref)).expanduser()
    if (folder / "adapter_config.json").is_file():
        return folder.resolve().name, folder.resolve()
    if folder.is_dir():
        raise UserError(
            "adapter",
            f"{folder} is a folder without adapter_config.json; give a folder saved by "
            "PEFT (save_pretrained) or a library adapter's name or id",
        )
    entry = library.find(ref)
    return entry.name, Path(entry.path)


def serve_recipe(refs: list[str]):
    """The vLLM recipe (engine.adapters.recipe.Recipe) for these adapters, by name, id or folder."""

    adapters = [recipe_adapter(ref) for ref in refs]
    names = [n for n, _ in adapters]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError("adapters", f"{', '.join(dupes)} named twice; each adapter needs its own name in vLLM")
    return recipe.build(adapters)
