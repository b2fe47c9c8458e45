"""Run the README's commands as written and record what each prints and how long it takes.

Every figure the README quotes next to a command (final metrics, export counts, wall time on
this machine) comes from this script::

    python bench/readme_commands.py                     # the quick-start chain and the experiments
    python bench/readme_commands.py --only default export prior sample
    python bench/readme_commands.py --list

Each command runs as a subprocess from the repository root, one after another (time nothing
else meanwhile). Runs go to a temporary ``paths.log_dir`` and exports to a temporary folder (the
only change to the README's command lines; the JSON records the exact argv). Writes
``bench/results/readme_commands.json``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_result

ROOT = Path(__file__).resolve().parents[1]
FINAL = re.compile(r"final metrics: (\{.*\})")
LAST = re.compile(r"last: (\S+\.ckpt)\)")
EXPORTED = re.compile(r"wrote (\d+) samples .*?: (\d+) distinct codes, ([\d.]+) bits per latent "
                      r"vector, vocabulary (\d+)")


@dataclass
class Command:
    """One README command: its name, its argv (``{tmp}``, ``{ae}``, ``{prior}`` filled in)."""

    name: str
    argv: list[str]
    readme: str
    needs: list[str] = field(default_factory=list)


COMMANDS = [
    Command("default", ["python", "train.py"], "python train.py"),
    Command("vqvae", ["python", "train.py", "experiment=vqvae"], "python train.py experiment=vqvae"),
    Command("vqvae_ema", ["python", "train.py", "experiment=vqvae_ema"],
            "python train.py experiment=vqvae_ema"),
    Command("llvqvae", ["python", "train.py", "experiment=llvqvae"],
            "python train.py experiment=llvqvae"),
    Command("llvqvae_dense", ["python", "train.py", "experiment=llvqvae_dense"],
            "python train.py experiment=llvqvae_dense"),
    Command("e8", ["python", "train.py", "model/quantizer=e8"], "python train.py model/quantizer=e8"),
    Command("export", ["llvq-export", "{ae}", "--out", "{tmp}/exports/photos"],
            "llvq-export <run>/checkpoints/last.ckpt --out exports/photos", needs=["default"]),
    Command("prior", ["python", "train.py", "experiment=prior", "data.path={tmp}/exports/photos"],
            "python train.py experiment=prior data.path=exports/photos", needs=["export"]),
    Command("sample", ["llvq-sample", "{prior}", "--num", "16", "--out", "{tmp}/samples.png"],
            "llvq-sample <prior run>/checkpoints/last.ckpt --num 16 --out samples.png",
            needs=["prior"]),
    Command("olala_digits", ["python", "train.py", "experiment=olala_digits"],
            "python train.py experiment=olala_digits"),
    Command("olala_digits_50", ["python", "train.py", "experiment=olala_digits", "model.rounds=50"],
            "python train.py experiment=olala_digits model.rounds=50"),
    Command("glvq_tiny", ["python", "train.py", "experiment=glvq_tiny"],
            "python train.py experiment=glvq_tiny"),
]
DEFAULT = ["default", "vqvae", "vqvae_ema", "llvqvae", "llvqvae_dense", "e8", "export", "prior",
           "sample", "olala_digits", "glvq_tiny"]


def run_one(cmd: Command, tmp: Path, found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Run ``cmd`` and return its figures; raises when it fails."""
    fill = {"tmp": str(tmp), "ae": found.get("default", {}).get("last_ckpt", ""),
            "prior": found.get("prior", {}).get("last_ckpt", "")}
    argv = [a.format(**fill) for a in cmd.argv]
    if argv[0] == "python":
        argv = [sys.executable, *argv[1:], f"paths.log_dir={tmp / 'logs'}"]
    else:  # console scripts of this environment
        argv = [str(Path(sys.executable).with_name(argv[0])), *argv[1:]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd.name}: exit {proc.returncode}\n{out[-4000:]}")
    row: dict[str, Any] = {"name": cmd.name, "readme": cmd.readme, "argv": argv[1:],
                           "wall_s": round(wall, 1)}
    if m := FINAL.search(out):
        row["metrics"] = ast.literal_eval(m.group(1))
    if m := LAST.search(out):
        row["last_ckpt"] = m.group(1)
    if m := EXPORTED.search(out):
        row["export"] = {"samples": int(m.group(1)), "distinct": int(m.group(2)),
                         "entropy_bits": float(m.group(3)), "vocabulary": int(m.group(4))}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=DEFAULT, metavar="NAME",
                        help=f"commands to run (default: {' '.join(DEFAULT)})")
    parser.add_argument("--list", action="store_true", help="list the commands and exit")
    parser.add_argument("--name", default="readme_commands", help="result file stem")
    args = parser.parse_args(argv)
    by_name = {c.name: c for c in COMMANDS}
    if args.list:
        for c in COMMANDS:
            print(f"{c.name:16s} {c.readme}")
        return
    unknown = [n for n in args.only if n not in by_name]
    if unknown:
        parser.error(f"unknown command(s) {unknown}; known: {', '.join(by_name)}")
    todo: list[str] = []
    for name in args.only:  # pull in what a command needs, in order
        for need in [*by_name[name].needs, name]:
            for dep in [*by_name[need].needs, need]:
                if dep not in todo:
                    todo.append(dep)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="llvq-readme-") as tmp:
        for i, name in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {by_name[name].readme}", file=sys.stderr, flush=True)
            rows[name] = run_one(by_name[name], Path(tmp), rows)
            print(f"    {rows[name]['wall_s']:.0f} s  {rows[name].get('metrics', '')}"
                  f"{rows[name].get('export', '')}", file=sys.stderr, flush=True)
    for row in rows.values():
        row.pop("last_ckpt", None)  # a temporary path
    table = [{"command": r["readme"], "wall": f"{r['wall_s']:.0f} s"} for r in rows.values()]
    print(markdown_table(table, ["command", "wall"]))
    path = write_result(args.name, {"commands": list(rows.values()),
                                    "note": "wall time of the whole command (start-up, data, "
                                            "training, evaluation) on this machine, one at a time"})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
