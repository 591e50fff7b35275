"""Config files: TOML reading, sections checked against a schema, registry lookups, parameter checks
against signatures, the config hash (paths under a moved directory hashed relative to it:
`paths_relative_to`), and the one "did you mean" for every unknown name.

Every config reader (runs, training, fine-tuning, experiments, HARMONY studies) is built from these
pieces, so an unknown key, a wrong type or an unknown name reads the same everywhere:
``config [data]: unknown key 'nn'. Did you mean 'n'? Allowed: ...``. Imports nothing but the errors
(no torch): the HARMONY web application may use it.

A schema maps each key of a table to ``(accepted types, default)``; `REQUIRED` marks a key without
default. A canonical config is what JSON gives back (tuples become lists), so its hash survives a
round trip through a file.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import inspect
import json
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from xaibench.errors import InputError, UnknownNameError

T = TypeVar("T")
REQUIRED = object()
Schema = dict[str, tuple[tuple[type, ...], Any]]
# Where something executes does not change its results: left out of every config hash.
NOT_HASHED = ("device", "resources")


def suggest(name: str, known: Iterable[str], *, n: int = 3, cutoff: float = 0.5, form: str = "{}") -> str:
    """``" Did you mean 'a', 'b'?"`` for the names of `known` close to `name` (at most `n`, similarity
    ratio >= `cutoff`), each shown as ``form.format(name)``; ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(repr(form.format(c)) for c in close)}?" if close else ""


def unknown_key(place: str, key: str, known: Iterable[str]) -> InputError:
    """The error for an unknown `key` at `place`, with close names and the allowed keys."""
    known = sorted(known)
    return InputError(f"{place}: unknown key {key!r}.{suggest(key, known)} Allowed: {', '.join(known)}.")


_HASH_ROOT: ContextVar[Path | None] = ContextVar("xaibench_hash_root", default=None)
ROOT_MARK = "<root>"


@contextlib.contextmanager
def paths_relative_to(root: str | Path) -> Iterator[None]:
    """Within the block, `config_hash` sees absolute paths under `root` (also after a spec's
    ``scheme:``) as ``<root>/relative/path``: the configs of runs inside a directory tree that is
    moved (an experiment's trainings and benchmarks) hash the same at the new place, so they resume."""
    token = _HASH_ROOT.set(Path(root).resolve())
    try:
        yield
    finally:
        _HASH_ROOT.reset(token)


def _portable(value: Any, root: Path) -> Any:
    """`value` with absolute paths under `root` written relative to it (see `paths_relative_to`)."""
    if isinstance(value, Mapping):
        return {k: _portable(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, root) for v in value]
    if not isinstance(value, str):
        return value
    scheme, sep, rest = value.partition(":")
    prefix, path = (scheme + sep, rest) if sep and len(scheme) > 1 else ("", value)
    if not path.startswith("/"):
        return value
    try:
        return f"{prefix}{ROOT_MARK}/{Path(path).relative_to(root).as_posix()}"
    except ValueError:
        return value


def config_hash(raw: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a validated config, without ``device`` and ``resources``
    (where a run executes does not change its results); paths under the root of `paths_relative_to`
    are hashed relative to it."""
    root = _HASH_ROOT.get()
    body = {k: v if root is None else _portable(v, root) for k, v in raw.items() if k not in NOT_HASHED}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


EXAMPLES = Path(__file__).resolve().parent / "configs"  # the shipped example configs


def example_config(name: str | Path) -> Path | None:
    """The shipped example config called `name` (``demo-digits`` or ``demo-digits.toml``), or None."""
    name = Path(name)
    if name.parent != Path("."):
        return None
    path = EXAMPLES / (name.name if name.suffix == ".toml" else f"{name.name}.toml")
    return path if path.is_file() else None


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The TOML file `path` as a dict; a missing file or invalid TOML raises `InputError` naming it.
    A bare name that is no file here is looked up among the shipped examples (`example_config`)."""
    path = Path(path)
    if not path.exists():
        path = example_config(path) or path
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        shipped = suggest(path.stem, [p.stem for p in EXAMPLES.glob("*.toml")]) if path.parent == Path(".") else ""
        hint = f".{shipped[:-1]} (a shipped example)?" if shipped else ""
        raise InputError(f"{what} file not found: {path}{hint}") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: invalid TOML: {err}") from None


def load_toml(path: str | Path, parse: Callable[[dict[str, Any]], T], what: str = "config") -> T:
    """``parse`` of the TOML file `path`: read and validation errors name the file (`what` names the kind)."""
    raw = read_toml(path, what)
    try:
        return parse(raw)
    except UnknownNameError as err:
        raise UnknownNameError(f"{path}: {err}") from None
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("table" if t is dict else t.__name__ for t in types)


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # TOML booleans are not integers
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def _place(where: str) -> str:
    return f"config {where.rstrip('.')}" if where else "config"


def section(where: str, table: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
    """`table` checked against `schema` with the defaults filled in. `where` prefixes the keys in
    errors: ``""`` for the top level, ``"[data]."`` for a table."""
    out: dict[str, Any] = {}
    for key in table:
        if key not in schema:
            raise unknown_key(_place(where), key, schema)
    for key, (types, default) in schema.items():
        if key not in table:
            if default is REQUIRED:
                raise InputError(f"config {where}: missing required key {key!r}")
            out[key] = default
            continue
        value = table[key]
        if value is None and default is None:
            out[key] = None
            continue
        if not _is_instance(value, types):
            raise InputError(
                f"config {where}{key}: expected {_type_name(types)}, got {type(value).__name__} {value!r}"
            )
        out[key] = value
    return out


def entries(table: Mapping[str, Any], kind: str, name_key: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(label, where, registry name, parameters) of each ``[<kind>.<label>]`` table; the registry
    name is the table's `name_key` entry, else its label."""
    if not table:
        raise InputError(f"config [{kind}]: at least one {name_key} is required")
    out = []
    for label, sub in table.items():
        where = f"[{kind}.{label}]"
        if not isinstance(sub, dict):
            raise InputError(f"config {where}: expected a table, got {type(sub).__name__} {sub!r}")
        params = dict(sub)
        name = params.pop(name_key, label)
        if not isinstance(name, str):
            raise InputError(f"config {where}.{name_key}: expected str, got {type(name).__name__}")
        out.append((label, where, name, params))
    return out


def lookup(where: str, registry: Any, name: str) -> Any:
    """``registry.get(name)``, its unknown-name error prefixed with ``config <where>``."""
    try:
        return registry.get(name)
    except UnknownNameError as err:
        raise UnknownNameError(f"config {where}: {err}") from None


def _check_param(where: str, name: str, value: Any, default: Any) -> None:
    """A parameter must have the type of its default (ints are accepted where floats are)."""
    if default is inspect.Parameter.empty or default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list))
    else:
        return
    if not ok:
        raise InputError(
            f"config {where}.{name}: expected {type(default).__name__} (like the default {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )


def check_params(where: str, fn: Any, params: Mapping[str, Any], skip: Iterable[str]) -> None:
    """Check `params` against the keyword parameters of `fn` (names, and the types of the defaults);
    the names in `skip` are not accepted (the caller supplies them)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    skip = tuple(skip)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        allowed = None
    else:
        allowed = [n for n in sig.parameters if n not in skip]
    for name, value in params.items():
        if allowed is not None and name not in allowed:
            raise unknown_key(_place(where), name, allowed)
        if name in sig.parameters:
            _check_param(where, name, value, sig.parameters[name].default)


@dataclass(frozen=True)
class CanonicalConfig:
    """A validated config held as its canonical dict `raw` (what JSON gives back, so hashes survive
    a round trip through the TOML written beside the output).

    Top-level keys read as attributes (``cfg.epochs``), tables as dicts (``cfg.model["spec"]``);
    `hash` leaves out the keys in `UNHASHED` (those that do not change the result).
    """

    raw: dict[str, Any]
    UNHASHED: ClassVar[tuple[str, ...]] = ("device",)

    def __getattr__(self, key: str) -> Any:
        raw = self.__dict__.get("raw", {})
        if key in raw:
            return raw[key]
        raise AttributeError(key)

    @property
    def hash(self) -> str:
        """sha256 of the canonical config without the `UNHASHED` keys."""
        return config_hash({k: v for k, v in self.raw.items() if k not in self.UNHASHED})

    def to_toml(self) -> str:
        """The canonical config as TOML (None values are left out: they are the defaults)."""
        def line(key: str, value: Any) -> str:
            text = json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
            return f"{key} = {text}"

        top = [line(k, v) for k, v in self.raw.items() if not isinstance(v, dict) and v is not None]
        tables = [f"\n[{name}]\n" + "\n".join(line(k, v) for k, v in table.items() if v is not None)
                  for name, table in self.raw.items() if isinstance(table, dict)]
        return "\n".join(top) + "\n" + "\n".join(tables) + "\n"
