"""Pack a Python bot into one executable file for the supervisor.

The supervisor runs every build from a private copy of the one file
``--worker`` names, checked by SHA-256 (``upgrade --sha256``) on the bytes it
copied. A bare script would leave out what else runs: its sibling modules
(which a copy elsewhere cannot even import) and this package, native part
included. ``python -m handoff.pack`` makes that one file a zipapp holding
all of them:

- the bot's script, run as ``__main__``, and the modules and packages named
  with ``--add``;
- this package: its Python files and its native module, which the zipapp's
  bootstrap loads from the archive's own bytes (through an anonymous memory
  file), never from the environment;
- a ``#!`` line naming the interpreter (default: the one running this).

Its SHA-256 therefore covers the bot and the handoff runtime that actually
run. The interpreter and the third-party packages it imports from its
``site-packages`` (httpx, say) are the environment, as for any Python
program: pin them with your lock file. The archive is reproducible: the same
inputs give the same bytes, so a CI pipeline can compute the SHA-256 it
passes to ``supervisorctl upgrade --sha256``.

    python -m handoff.pack bot.py --add strategy.py --add mylib/ -o /opt/bot/bot.pyz
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

# A fixed timestamp for every entry: the same inputs give the same archive.
_EPOCH = (1980, 1, 1, 0, 0, 0)

_BOOTSTRAP = '''\
# Written by handoff.pack: load handoff's native module from this archive
# (never from the environment), then run the bot as __main__.
import importlib.machinery, importlib.util, os, runpy, sys, zipfile

def _load_native():
    name = "handoff._native"
    with zipfile.ZipFile(__loader__.archive) as z:
        data = z.read({native!r})
    fd = os.memfd_create(name, 0)
    try:
        os.write(fd, data)
        path = "/proc/self/fd/%d" % fd
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.close(fd)
    sys.modules[name] = module

_load_native()
runpy.run_module({entry!r}, run_name="__main__", alter_sys=True)
'''


class PackError(Exception):
    """What is wrong with the pack's inputs."""


def _package_files() -> List[Tuple[str, Path]]:
    """This package's files, as (name in the archive, path on disk)."""
    from . import _native

    here = Path(__file__).resolve().parent
    native = Path(_native.__file__).resolve()
    if not native.is_file():
        raise PackError(
            f"handoff's native module is not a file ({native}): "
            "install the package with pip (pip install ./python) and pack with that interpreter"
        )
    files = [
        (f"handoff/{p.name}", p)
        for p in sorted(here.iterdir())
        if p.suffix == ".py" or p.name == "py.typed"
    ]
    files.append((f"handoff/{native.name}", native))
    return files


def _module_files(path: Path) -> List[Tuple[str, Path]]:
    """A module (``x.py``) or a package directory, as archive entries."""
    if path.is_file():
        if path.suffix != ".py":
            raise PackError(f"--add {path}: a module is a .py file")
        return [(path.name, path)]
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise PackError(f"--add {path}: a package directory has an __init__.py")
        out = []
        for p in sorted(path.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                out.append((f"{path.name}/{p.relative_to(path).as_posix()}", p))
        return out
    raise PackError(f"--add {path}: no such file or directory")


def _write(z: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, _EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    z.writestr(info, data)


def pack(
    entry: Path,
    out: Path,
    add: Iterable[Path] = (),
    interpreter: Optional[str] = None,
) -> str:
    """Write the zipapp of ``entry`` (plus ``add``) to ``out``, executable,
    replacing it in one rename; return its SHA-256."""
    entry = Path(entry)
    if not entry.is_file() or entry.suffix != ".py":
        raise PackError(f"{entry}: the bot's entry is a .py file")
    interpreter = interpreter or sys.executable
    if not os.path.isabs(interpreter):
        raise PackError(f"--python {interpreter}: the interpreter is an absolute path")
    files: List[Tuple[str, Path]] = [(entry.name, entry)]
    for a in add:
        files.extend(_module_files(Path(a)))
    files.extend(_package_files())
    names = [n for n, _ in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PackError(f"two files would be stored as {', '.join(dupes)}")
    native = next(n for n, p in files if n.startswith("handoff/_native"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        _write(
            z,
            "__main__.py",
            _BOOTSTRAP.format(native=native, entry=entry.stem).encode(),
        )
        for name, path in sorted(files):
            _write(z, name, path.read_bytes())
    data = b"#!" + interpreter.encode() + b"\n" + buf.getvalue()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    return hashlib.sha256(data).hexdigest()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m handoff.pack",
        description="Pack a bot, its modules and the handoff package into one "
        "executable zipapp for `supervisor --worker` (prints its SHA-256).",
    )
    p.add_argument("entry", type=Path, help="the bot's script (run as __main__)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    p.add_argument(
        "--add",
        type=Path,
        action="append",
        default=[],
        help="a module (.py) or package directory the bot imports (repeatable)",
    )
    p.add_argument(
        "--python",
        default=None,
        help="the interpreter of the #! line (default: this one, %(default)s)",
    )
    args = p.parse_args(argv)
    try:
        digest = pack(args.entry, args.output, args.add, args.python)
    except (PackError, OSError) as e:
        print(f"handoff.pack: {e}", file=sys.stderr)
        return 2
    print(f"{digest}  {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
