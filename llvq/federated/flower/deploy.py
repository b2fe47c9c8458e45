"""Deployment on this machine: one SuperLink and ``U`` SuperNodes as separate processes on 127.0.0.1.

The Flower App is a folder holding one ``pyproject.toml`` (:func:`write_app`) whose components
are llvq's apps (``llvq.federated.flower.server:app`` / ``client:app``) and whose run config
carries the settings as JSON (key ``llvq-settings``); ``flwr run`` builds it into a FAB and
submits it to the SuperLink named in the Flower configuration (``$FLWR_HOME/config.toml``,
:func:`write_connection`). Every SuperNode gets ``partition-id = u`` and runs the ``ClientApp``
of client ``u`` in a subprocess per message.

The commands (Flower 1.42; see ``docs/federated.md``)::

    flower-superlink --insecure --host 127.0.0.1 --port 9100 --disable-runtime-dependency-installation
    flower-supernode --insecure --superlink 127.0.0.1:9100 --port 9110 \\
        --node-config "partition-id=0 num-partitions=2"
    flower-supernode --insecure --superlink 127.0.0.1:9100 --port 9111 \\
        --node-config "partition-id=1 num-partitions=2"
    FLWR_HOME=<dir> flwr run <app dir> llvq --stream

``python -m llvq.federated.flower.deploy --workdir DIR model.compressor=lattice model.rounds=2``
writes the app and the connection under ``DIR``, starts everything, runs and shuts down
(:class:`LocalDeployment`); ``--print`` only writes the files and prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llvq.federated.flower.settings import RUN_CONFIG_KEY, FlowerSettings

__all__ = ["CONNECTION", "LocalDeployment", "free_port", "main", "write_app", "write_connection"]

#: the name of the SuperLink connection written by :func:`write_connection`.
CONNECTION = "llvq"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def write_app(app_dir: str | Path, settings: FlowerSettings) -> Path:
    """Write the Flower App (``pyproject.toml`` only) that runs ``settings``; returns the folder."""
    app = Path(app_dir)
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(f"""\
# A Flower App running llvq's compressed FedAvg (written by llvq.federated.flower.deploy).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "llvq-flower"
version = "1.0.0"
description = "llvq update compressors (none, uniform, qsgd, lattice, olala) on Flower"
license = "MIT"
# llvq and flwr must already be installed where the SuperLink and SuperNodes run
dependencies = []

[tool.flwr.app]
publisher = "llvq"

[tool.flwr.app.components]
serverapp = "llvq.federated.flower.server:app"
clientapp = "llvq.federated.flower.client:app"

[tool.flwr.app.config]
{RUN_CONFIG_KEY} = {_toml_str(settings.to_json())}
""", encoding="utf-8")
    return app


def write_connection(flwr_home: str | Path, address: str, name: str = CONNECTION) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one insecure SuperLink connection ``name`` (default)."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                    f'address = "{address}"\ninsecure = true\n', encoding="utf-8")
    return path


def _exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"'{name}' not found next to {sys.executable} or on PATH: "
                                "pip install 'llvq[flower]'")
    return found


def _wait_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on "
                               f"{port}; its log ({log}):\n{_tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s; log ({log}):\n"
                       f"{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalDeployment:
    """A SuperLink and ``settings.num_clients`` SuperNodes on 127.0.0.1, as subprocesses.

    Every process is started in its own session and stopped with its whole process group
    (the SuperExec and app processes Flower forks included) by :meth:`close`, which
    ``with LocalDeployment(...)`` calls on any exit.

    Args:
        settings: the run (``output_dir`` should be set to read its results).
        workdir: where the app, ``flwr-home/`` and the processes' logs go.
        threads: ``OMP_NUM_THREADS`` / torch threads of every process.
        start_timeout: seconds to wait for the SuperLink to listen.
        port: the SuperLink's port (SuperNode ``u`` serves its runtime API on ``port + 10 + u``);
            ``None``: free ports chosen by the OS.
    """

    def __init__(self, settings: FlowerSettings, workdir: str | Path, threads: int = 1,
                 start_timeout: float = 60.0, port: int | None = None) -> None:
        self.s = settings
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.app = write_app(self.dir / "app", settings)
        self.home = self.dir / "flwr-home"
        self.port = int(port) if port else free_port()
        self.node_ports = ([self.port + 10 + u for u in range(settings.num_clients)] if port else
                           [free_port() for _ in range(settings.num_clients)])
        write_connection(self.home, f"127.0.0.1:{self.port}")
        self.start_timeout = float(start_timeout)
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def commands(self) -> list[list[str]]:
        """The SuperLink's and SuperNodes' command lines (the order they start in)."""
        link = [_exe("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                str(self.port), "--disable-runtime-dependency-installation"]
        n = self.s.num_clients
        nodes = [[_exe("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                  "--host", "127.0.0.1", "--port", str(p),
                  "--node-config", f"partition-id={u} num-partitions={n}"]
                 for u, p in enumerate(self.node_ports)]
        return [link, *nodes]

    def run_command(self) -> list[str]:
        """``flwr run <app> llvq --stream``."""
        return [_exe("flwr"), "run", str(self.app), CONNECTION, "--stream"]

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = self.dir / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.dir, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def start(self) -> None:
        """Start the SuperLink, wait until it listens, then start the SuperNodes."""
        link, *nodes = self.commands()
        proc = self._spawn("superlink", link)
        _wait_port(self.port, self.start_timeout, proc, self.dir / "superlink.log")
        for u, cmd in enumerate(nodes):
            self._spawn(f"supernode{u}", cmd)

    def run(self, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """``flwr run`` the app and stream its log until the run ends (killed after ``timeout``).

        Raises:
            subprocess.TimeoutExpired: the run did not end in time.
        """
        with (self.dir / "flwr-run.log").open("wb") as fh:
            proc = subprocess.Popen(self.run_command(), stdout=fh, stderr=subprocess.STDOUT,
                                    env=self.env, cwd=self.app, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise
        return subprocess.CompletedProcess(proc.args, proc.returncode)

    def logs(self, lines: int = 20) -> str:
        """The last lines of every process's log (for an error message)."""
        names = [name for name, _ in self.procs] + ["flwr-run"]
        return "\n".join(f"--- {n}.log\n{_tail(self.dir / f'{n}.log', lines)}" for n in names)

    def close(self) -> None:
        """Stop every process started here with its process group (TERM, then KILL)."""
        for _, proc in reversed(self.procs):
            _kill_group(proc)
        self.procs.clear()

    def __enter__(self) -> LocalDeployment:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """TERM the process group of ``proc`` (started with ``start_new_session``), KILL after ``grace``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # children left in the group (SuperExec, app processes)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=grace)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``model.key=value`` (or ``key=value``) pairs; values parsed as YAML scalars / JSON."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override '{item}' is not key=value")
        out[key.removeprefix("model.")] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m llvq.federated.flower.deploy``: a whole deployment on loopback, or its commands."""
    p = argparse.ArgumentParser(prog="python -m llvq.federated.flower.deploy",
                                description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="app, flwr-home, logs and results go here")
    p.add_argument("--print", action="store_true", help="write the files, print the commands, exit")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    p.add_argument("--port", type=int, default=None,
                   help="SuperLink port (SuperNodes: port+10+u); default: free ports")
    p.add_argument("overrides", nargs="*", help="model.key=value settings (configs/model/federated.yaml keys)")
    args = p.parse_args(argv)
    opts = _parse_overrides(args.overrides)
    opts.setdefault("output_dir", str(Path(args.workdir).resolve() / "results"))
    dep = LocalDeployment(FlowerSettings.from_mapping(opts), args.workdir, port=args.port)
    if args.print:
        for cmd in [*dep.commands(), dep.run_command()]:
            print(" ".join(f"'{c}'" if " " in c else c for c in cmd))
        print(f"# with FLWR_HOME={dep.home} for flwr run")
        return 0
    with dep:
        done = dep.run(args.timeout)
    history = Path(dep.s.output_dir or "") / "history.json"
    print(f"flwr run exited with {done.returncode}; logs under {dep.dir}; history: {history}")
    return 0 if history.is_file() else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
