"""After training: `adapters` (list, import, rename, delete, retention), `generate`, `merge`, `compose`."""

from __future__ import annotations

import json
import sys

from engine.adapters.compose import COMBINATIONS
from engine.adapters.merge import zip_folder
from engine.errors import UserError
from engine.units import human_bytes
from jobs import library, workbench
from ui.cli import commands


def register(sub) -> None:
    p = sub.add_parser("adapters", help=commands.help_for("adapters"))
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.add_argument("--base", default=None, help="only adapters of this base model")
    p.set_defaults(handler=cmd_list)
    a = p.add_subparsers(dest="adapters_command", metavar="ACTION")
    q = a.add_parser("import", help="add a PEFT adapter folder or a .zip of one (copied into the library)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--name", default=None, help="library name (default: the folder or zip name)")
    q.add_argument("--base", default=None, help="base model, when the adapter's own config names one not found here")
    q.add_argument("--skill", default=None, help="the demo skill it was trained on (its held-out split scores it)")
    q.set_defaults(handler=cmd_import)
    q = a.add_parser("rename", help="give an adapter a new name")
    q.add_argument("ref", metavar="NAME|ID")
    q.add_argument("new_name", metavar="NEW_NAME")
    q.set_defaults(handler=cmd_rename)
    q = a.add_parser("delete", help="remove an adapter (a job's own folder stays with the job)")
    q.add_argument("ref", metavar="NAME|ID")
    q.add_argument("--yes", action="store_true", help="do not ask")
    q.set_defaults(handler=cmd_delete)
    q = a.add_parser("retention", help="a composed adapter vs each source on the source's held-out split")
    q.add_argument("ref", metavar="NAME|ID")
    q.add_argument("--json", action="store_true", help="machine-readable table")
    q.set_defaults(handler=cmd_retention)

    p = sub.add_parser("generate", help=commands.help_for("generate"))
    p.add_argument("--adapter", required=True, metavar="NAME|ID")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--base", action="store_true", help="also print the base model's answer")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable answers")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("merge", help=commands.help_for("merge"))
    p.add_argument("ref", metavar="NAME|ID")
    p.add_argument("--out", default=None, metavar="DIR", help="new folder (default: $LORAPILOT_HOME/merged/NAME)")
    p.add_argument("--zip", action="store_true", help="also write DIR.zip")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("compose", help=commands.help_for("compose"))
    p.add_argument("refs", nargs="+", metavar="NAME|ID")
    p.add_argument("--weights", required=True, help="one per adapter, e.g. 0.5,0.5")
    p.add_argument(
        "--combination",
        default="linear",
        choices=COMBINATIONS,
        help="linear, ties, dare_ties need equal ranks; cat and svd take any",
    )
    p.add_argument("--density", type=float, default=None, help="share of weights kept by ties/dare_ties (default 0.5)")
    p.add_argument("--name", required=True, help="library name of the new adapter")
    p.add_argument("--retention", action="store_true", help="then score it against each source's held-out split")
    p.set_defaults(handler=cmd_compose)


# --- library --------------------------------------------------------------------------------
def cmd_list(ns) -> int:
    entries = library.list_adapters(base_model=ns.base)
    if ns.json:
        print(json.dumps([library.summary(a) for a in entries], indent=2))
        return 0
    if not entries:
        print("no adapters yet; finish a job (`python app.py demo`) or `python app.py adapters import PATH`")
        return 0
    rows = [("ID", "NAME", "METHOD", "R", "SIZE", "SCORE", "JOB", "CREATED", "TARGETS")]
    last_base = None
    for a in entries:
        if a.base_model != last_base:
            _table(rows) if len(rows) > 1 else None
            print(f"base {a.base_model}:")
            rows, last_base = rows[:1], a.base_model
        s = a.scores
        score = f"{s['base']:.0f}->{s['adapter']:.0f}%" if {"base", "adapter"} <= set(s) else "-"
        rows.append(
            (
                str(a.id),
                a.name,
                a.method,
                str(a.r),
                human_bytes(a.bytes),
                score,
                str(a.job_id or "-"),
                a.created_at.strftime("%Y-%m-%d %H:%M"),
                a.targets,
            )
        )
    _table(rows)
    return 0


def _table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def cmd_import(ns) -> int:
    a = library.import_adapter(ns.path, name=ns.name, base=ns.base, skill=ns.skill)
    print(f"imported '{a.name}' (id {a.id}): base {a.base_model}, r {a.r}, {human_bytes(a.bytes)}, in {a.path}")
    return 0


def cmd_rename(ns) -> int:
    a = library.rename(ns.ref, ns.new_name)
    print(f"adapter {a.id} is now '{a.name}'")
    return 0


def cmd_delete(ns) -> int:
    a = library.find(ns.ref)
    if not ns.yes:
        if not sys.stdin.isatty():
            raise UserError("delete", f"deleting '{a.name}' needs confirmation; add --yes")
        if input(f"delete adapter '{a.name}' ({a.path})? [y/N] ").strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    library.delete(a.id)
    print(f"deleted '{a.name}'" + (f"; job {a.job_id}'s folder is kept" if a.job_id else ""))
    return 0


def cmd_retention(ns) -> int:
    _print_retention(workbench.retention(ns.ref), ns.json)
    return 0


def _print_retention(rows, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no source has a known demo skill with a held-out split; nothing to score")
        return
    print("skill retention (held-out exact match, %):")
    table = [("SKILL", "SOURCE", "BASE", "ALONE", "COMPOSED", "KEPT")]
    for r in rows:
        table.append(
            (
                r["skill"],
                r["source"],
                f"{r['base']:.0f}",
                f"{r['alone']:.0f}",
                f"{r['composed']:.0f}",
                "-" if r["kept"] is None else f"{r['kept']:.0f}%",
            )
        )
    _table(table)


# --- generate / merge / compose --------------------------------------------------------------
def cmd_generate(ns) -> int:
    settings = dict(max_new_tokens=ns.max_new_tokens, temperature=ns.temperature, top_p=ns.top_p, seed=ns.seed)
    if ns.json:
        print(json.dumps(workbench.generate(ns.adapter, ns.prompt, base=ns.base, **settings), indent=2))
        return 0
    entry = library.find(ns.adapter)
    host = workbench.host_for(entry)
    for label, name in [(entry.name, entry.name)] + ([("base", None)] if ns.base else []):
        stream = host.generate(ns.prompt, adapter=name, **settings)  # checks settings before printing
        print(f"[{label}] ", end="", flush=True)
        for chunk in stream:
            print(chunk, end="", flush=True)
        print()
    return 0


def cmd_merge(ns) -> int:
    out = workbench.merge(ns.ref, ns.out)
    print(f"merged model: {out}")
    if ns.zip:
        print(f"zip: {zip_folder(out)}")
    print(f"use it as a base: python app.py train --model {out} ...")
    return 0


def cmd_compose(ns) -> int:
    try:
        weights = [float(w) for w in ns.weights.split(",") if w.strip()]
    except ValueError:
        raise UserError("weights", f"got {ns.weights!r}; give numbers separated by commas, e.g. 0.5,0.5") from None
    a = workbench.compose(ns.refs, weights, ns.combination, ns.name, density=ns.density)
    print(f"composed '{a.name}' (id {a.id}): {a.description}, r {a.r}, in {a.path}")
    if ns.retention:
        _print_retention(workbench.retention(a.id), False)
    return 0
