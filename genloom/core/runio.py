"""Run directories: what a trained run leaves behind and how it is loaded back.

A run directory holds ``config.yaml`` (the resolved config), ``plugins.json`` (the plugins and
versions that built it, and which distribution supplied each component), ``model.safetensors``
(the weights; loading never unpickles code), ``tokenizer/`` (whatever the tokenizer saves, e.g. a
trained BPE) and ``checkpoints/`` (Lightning checkpoints for exact resume).

Guarantees (docs/reliability.md): one writer at a time (:class:`RunLock`, an ``flock`` on
``.genloom.lock`` naming the holder's PID; the kernel drops it when the holder dies); existing run
content is never replaced unless asked (:func:`prepare_run_dir`); every file is written to a
temporary file in the same directory and renamed into place (:func:`atomic_write`), and leftover
temporary files of a killed writer are removed on the next start; the weights carry a SHA-256 of
their tensor data in the safetensors metadata and checkpoints a CRC per archive member, both
checked on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

from genloom.core.errors import CheckpointError, ConfigError, GenloomError

CONFIG = "config.yaml"
PLUGINS = "plugins.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
LOCK = ".genloom.lock"
TMP_SUFFIX = ".tmp"
#: What a run writes; ``--overwrite`` removes these and nothing else.
RUN_ENTRIES = (CONFIG, PLUGINS, WEIGHTS, TOKENIZER, CHECKPOINTS, "metrics.json", "logs", "wandb", "wandb_id.txt", "lightning_logs")
#: Metadata key of the SHA-256 of the tensor data in model.safetensors.
CHECKSUM_KEY = "genloom.sha256"


# -- atomic writes ------------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path: Path):
    """Yield a temporary path in ``path``'s directory; on success fsync it and rename it onto ``path``.

    A kill at any moment leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text)


@contextlib.contextmanager
def atomic_directory(path: Path):
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` (old copy removed)."""
    path = Path(path)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{os.getpid()}.old{TMP_SUFFIX}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_temporary_files(run_dir: Path) -> list[Path]:
    """Remove what a killed writer left (``*.tmp`` files and folders); call it holding the lock."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.endswith(TMP_SUFFIX):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()
                removed.append(entry)
    return removed


# -- one writer per run directory ---------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run directory, held for the life of a training run or an import.

    ``fcntl.flock`` on ``RUN/.genloom.lock``: the kernel releases it when the holder exits, even
    on ``kill -9``, so a lock left by a dead process is simply taken over. The file names the
    holder's PID and host so that a refused writer can say who holds it.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: int | None = None
        self.previous: str = ""
        self.created = False  # prepare_run_dir made the directory
        self.made_file = False  # acquire made the lock file

    def acquire(self) -> "RunLock":
        self.made_file = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(f"cannot write to run directory '{self.run_dir}': {exc.strerror}") from None
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the PID file alone
            fcntl = None
        self.previous = _read_fd(fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise CheckpointError(f"run directory '{self.run_dir}' is in use by another genloom process ({_holder(self.previous)}); "
                                      f"wait for it to finish or stop it, or choose another --run-dir") from None
        elif self.previous and _alive(self.previous):
            os.close(fd)
            raise CheckpointError(f"run directory '{self.run_dir}' is in use by another genloom process ({_holder(self.previous)})")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    @property
    def took_over(self) -> str | None:
        """The holder a dead process left in the lock file, if any (a stale lock taken over)."""
        return _holder(self.previous) if self.previous.strip() else None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing drops the flock; the file stays (unlinking it would race a waiter)
        self.fd = None

    def release_after_failure(self) -> None:
        """Release after a failed start: the lock file, if this lock made it, and a directory
        :func:`prepare_run_dir` created and in which nothing was written are removed again, so a
        failed command leaves nothing behind."""
        empty = self.created and self.fd is not None and not run_content(self.run_dir)
        if (empty or self.made_file) and self.fd is not None:  # leave no lock file where nothing was written
            with contextlib.suppress(OSError):
                self.path.unlink()
        self.release()
        if empty:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()

    def __enter__(self):
        return self if self.fd is not None else self.acquire()

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self.release_after_failure()
        else:
            self.release()


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _holder(text: str) -> str:
    pid, _, host = text.partition(" ")
    return f"PID {pid or '?'}{' on ' + host if host else ''}"


def _alive(text: str) -> bool:
    pid, _, host = text.partition(" ")
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def run_content(run_dir: Path) -> list[str]:
    """Names of what a run directory holds (the lock file and temporary files aside)."""
    if not run_dir.is_dir():
        return []
    return sorted(e.name for e in run_dir.iterdir() if e.name != LOCK and not e.name.endswith(TMP_SUFFIX))


def is_run_directory(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a genloom run (what --overwrite may remove), not just files with the same names."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (PLUGINS, WEIGHTS, CHECKPOINTS, TOKENIZER, "wandb_id.txt"))


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False, resume: bool = False, what: str = "run") -> RunLock:
    """Create (or check) ``run_dir``, lock it, clean a killed writer's temporary files, and refuse
    to start over existing content unless ``overwrite`` (which removes the run's own files, never
    other files) or ``resume``. Returns the held :class:`RunLock`; release it when done."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"'{run_dir}' exists and is not a directory; choose another run directory")
    if run_dir.is_symlink() and not run_dir.exists():
        raise CheckpointError(f"'{run_dir}' is a symbolic link to '{os.readlink(run_dir)}', which does not exist")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create run directory '{run_dir}': {exc.strerror}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to run directory '{run_dir}': permission denied")
    was_run = is_run_directory(run_dir)
    lock = RunLock(run_dir).acquire()
    lock.created = created
    try:
        clean_temporary_files(run_dir)
        content = run_content(run_dir)
        if content and not (overwrite or resume):
            shown = ", ".join(content[:6]) + (", ..." if len(content) > 6 else "")
            raise CheckpointError(f"'{run_dir}' already holds files ({shown}); nothing was changed. Pass --resume to continue that run, "
                                  f"--overwrite to replace it, or choose another directory")
        if (overwrite or resume) and content and not was_run and any(name in content for name in RUN_ENTRIES):
            raise CheckpointError(f"'{run_dir}' does not look like a genloom run (no {PLUGINS}, {WEIGHTS}, {CHECKPOINTS}/ or "
                                  f"{TOKENIZER}/) but holds {', '.join(n for n in content if n in RUN_ENTRIES)}; "
                                  f"{'--overwrite' if overwrite else '--resume'} only continues or replaces runs, so nothing was "
                                  f"changed: choose another directory")
        if overwrite and content:
            for name in RUN_ENTRIES:
                entry = run_dir / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.exists() or entry.is_symlink():
                    entry.unlink()
    except BaseException:
        lock.release_after_failure()
        raise
    return lock


def plugin_manifest(validated, registry) -> dict:
    comps = {}
    for key, spec in validated.components.items():
        comps[key] = {"kind": spec.record.kind, "name": spec.record.name, "plugin": spec.record.plugin, "distribution": spec.record.distribution, "version": spec.record.version}
    for key, specs in validated.lists.items():
        for i, spec in enumerate(specs):
            comps[f"{key}[{i}]"] = {"kind": spec.record.kind, "name": spec.record.name, "plugin": spec.record.plugin, "distribution": spec.record.distribution, "version": spec.record.version}
    plugins = {p.name: {"distribution": p.distribution, "version": p.version} for p in registry.plugins.values() if not p.error}
    return {"components": comps, "plugins": plugins}


def save_config(run_dir: Path, validated, registry) -> None:
    """Write config.yaml (values from the environment kept as ``${oc.env:...}``) and plugins.json, atomically."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(validated.to_saved())))
    write_text(run_dir / PLUGINS, json.dumps(plugin_manifest(validated, registry), indent=2))


def save_tokenizer(run_dir: Path, tokenizer) -> None:
    """Write the tokenizer's files into ``RUN/tokenizer/`` as a whole (a temporary folder renamed into place)."""
    if not hasattr(tokenizer, "save"):
        return
    with atomic_directory(run_dir / TOKENIZER) as tmp:
        tokenizer.save(tmp)


def save_weights(run_dir: Path, model) -> Path:
    """Write the model's weights as safetensors (shared tensors stored once, a SHA-256 of the tensor
    data in the metadata) and the tokenizer files, each atomically."""
    from safetensors.torch import save_model

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / WEIGHTS
    with atomic_write(path) as tmp:
        save_model(model, str(tmp), metadata={CHECKSUM_KEY: "0" * 64})
        _stamp_checksum(Path(tmp))
    save_tokenizer(run_dir, model.tokenizer)
    return path


def _safetensors_layout(path: Path) -> tuple[int, dict]:
    """(offset of the tensor data, header) of a safetensors file; CheckpointError if it is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size or n > 100_000_000:
            raise CheckpointError(f"weights file '{path}' is truncated or corrupted (no valid safetensors header)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"weights file '{path}' is corrupted (its safetensors header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"weights file '{path}' is corrupted (its safetensors header is not a mapping)")
    return 8 + n, header


def _data_digest(path: Path, start: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp_checksum(path: Path) -> None:
    """Replace the all-zero placeholder of :data:`CHECKSUM_KEY` by the digest (same length, in place)."""
    start, _ = _safetensors_layout(path)
    digest = _data_digest(path, start)
    with open(path, "rb+") as f:
        header = f.read(start)
        placeholder = f'"{CHECKSUM_KEY}":"{"0" * 64}"'.encode()
        at = header.find(placeholder)
        if at < 0:
            raise CheckpointError(f"could not record the checksum in '{path}'")
        f.seek(at)
        f.write(f'"{CHECKSUM_KEY}":"{digest}"'.encode())


def verify_weights(path: Path) -> None:
    """Check ``model.safetensors`` against the SHA-256 in its metadata (files without one are only parsed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file '{path}' does not exist")
    start, header = _safetensors_layout(path)
    expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
    if expected is None:
        return
    if _data_digest(path, start) != expected:
        raise CheckpointError(f"weights file '{path}' is corrupted: its tensor data does not match the SHA-256 recorded when it "
                              f"was written; restore it from a copy or retrain")


def load_weights(model, path: Path) -> None:
    from safetensors.torch import load_model

    verify_weights(path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as exc:
        raise CheckpointError(f"weights file '{path}' is truncated or corrupted ({type(exc).__name__}: {exc})") from None
    if missing or unexpected:
        raise CheckpointError(f"weights file '{path}' does not match the model built from its config: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")


def validate_run_config(run_dir: Path, overrides=None, registry=None):
    from genloom.core import config as config_mod

    cfg_path = run_dir / CONFIG
    if not cfg_path.exists():
        raise CheckpointError(f"'{run_dir}' is not a genloom run directory: {cfg_path} is missing")
    manifest = read_manifest(run_dir)
    pins = {key: comp for key, comp in manifest.get("components", {}).items() if isinstance(comp, dict)}
    try:
        return config_mod.validate(config_mod.compose(cfg_path, overrides), registry, pins=pins)
    except ConfigError as exc:
        if manifest:
            for key, comp in pins.items():
                if exc.path == f"{key}.name" and f"unknown {comp.get('kind')} '{comp.get('name')}'" in str(exc):  # the run's own, not a name the user just chose
                    raise ConfigError(f"{exc} This run was built with {comp.get('kind')} '{comp.get('name')}' from plugin '{comp.get('plugin')}': "
                                      f"install the distribution '{comp.get('distribution')}' (version {comp.get('version')}).") from exc
        raise


def read_manifest(run_dir: Path) -> dict:
    """plugins.json of a run ({} when absent); a damaged one is an error naming the file."""
    path = Path(run_dir) / PLUGINS
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{path}' is corrupted ({exc}); restore it or delete it to load the run with whatever plugins are installed") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("components", {}), dict):
        raise CheckpointError(f"'{path}' is corrupted (not a genloom plugin manifest)")
    return manifest


def find_run_dir(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        # a weights file or a checkpoint inside run_dir/ or run_dir/checkpoints/
        for parent in (path.parent, path.parent.parent):
            if (parent / CONFIG).exists():
                return parent
        raise CheckpointError(f"no {CONFIG} found next to '{path}'")
    return path


def load_generator(path_or_config, overrides=None, registry=None, device=None):
    from genloom.core import config as config_mod
    from genloom.core.generation import Generator
    from genloom.core.model import assemble

    path = Path(path_or_config)
    if path.suffix in (".yaml", ".yml"):
        validated = config_mod.load(path, overrides, registry)
        built = assemble(validated, registry)
        return Generator(built)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist (expected a run directory, a weights/checkpoint file or a config .yaml)")
    run_dir = find_run_dir(path)
    validated = validate_run_config(run_dir, overrides, registry)
    tok_dir = run_dir / TOKENIZER
    built = assemble(validated, registry, data=False, fit_tokenizer=False, tokenizer=_load_tokenizer(validated, registry, tok_dir))
    weights = path if path.suffix == ".safetensors" else run_dir / WEIGHTS
    if path.suffix == ".ckpt":
        load_lightning_weights(built.model, path)
    else:
        load_weights(built.model, weights)
    if device is not None:
        built.model.to(device)
    built.model.eval()
    return Generator(built, run_dir)


def _load_tokenizer(validated, registry, tok_dir: Path):
    from genloom.core.context import BuildContext
    from genloom.core.model import build_component

    ctx = BuildContext(registry)
    data = validated.components.get("data")
    if data is not None and hasattr(data.config, "bind"):
        data.config.bind(ctx)  # what the data config publishes without loading any data
    tok = build_component(validated.components["tokenizer"], ctx)
    if hasattr(tok, "load"):  # a tokenizer that saves files needs them (it says so if they are missing)
        try:
            tok.load(tok_dir)
        except GenloomError:
            raise
        except Exception as exc:
            raise CheckpointError(f"the tokenizer files in '{tok_dir}' are missing or damaged ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return tok


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` if it is missing, truncated or corrupted (CRC of every archive member)."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (a run killed while writing it?); delete it to start over")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupted: it is not a complete PyTorch archive; "
                              f"delete it (and resume from an earlier copy) or start the run again with --overwrite")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupted ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint '{path}' is corrupted: member '{bad}' fails its CRC check; delete it or start the run again with --overwrite")


def load_lightning_weights(model, ckpt: Path) -> None:
    import torch

    verify_checkpoint(ckpt)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint '{ckpt}' is truncated or corrupted ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"'{ckpt}' is not a Lightning checkpoint (no state_dict)")
    sd = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint '{ckpt}' does not match the model built from its config: {str(exc).splitlines()[0]}") from None
