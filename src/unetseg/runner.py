"""Running one command: check the config before Hydra makes any folder, then hand over to Hydra.

Hydra prints composition errors over several lines; unetseg composes the config once up front with
Hydra's own compose API so that a typo, a wrong type, an unknown option or an out-of-range value
becomes one line that names the key and the fix, with exit code 2 and no run directory made.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    ConfigTypeError,
    InterpolationKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from unetseg import sweep
from unetseg.checks import CHECKS, check_device_here
from unetseg.config import register_schemas, to_typed
from unetseg.io.atomic import write_text_atomic
from unetseg.io.claims import LOCK_NAME, claim_folder, folder_in_use
from unetseg.io.strict_json import to_json
from unetseg.overrides import quoting_advice
from unetseg.runtime import distributed
from unetseg.runtime.console import console, print_error
from unetseg.runtime.errors import (
    EXIT_ENVIRONMENT,
    EXIT_USER_ERROR,
    MachineFault,
    UserError,
    describe_out_of_memory,
    describe_storage_error,
)
from unetseg.runtime.paths import config_dir, register_resolvers, run_stamp, share_run_stamp, user_path
from unetseg.training.run_folder import refuse_run_among_data, refuse_to_train_into

log = logging.getLogger(__name__)

# A command's task gets its config as the typed schema (checked) and its run directory.
Task = Callable[[Any, Path], dict[str, Any] | None]


def _override_variants(command: str, overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to check: each sweep value once, the other overrides at their first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        for o in sweeps:  # a comma in a path is the likelier reading than a sweep over paths without -m
            advice = quoting_advice(o.input_line or "") if o.value_type == ValueType.SIMPLE_CHOICE_SWEEP else None
            if advice:
                raise UserError(advice)
        line = sweeps[0].input_line
        raise UserError(f"{line} is a sweep: add -m to run one job per value (unetseg {command} -m {line})")

    def with_value(o: Any, value: str) -> str:
        return f"{o.get_key_element()}={value}"

    def values(o: Any) -> list[str]:
        try:
            return [with_value(o, v) for v in o.sweep_string_iterator()]
        except Exception:  # glob() sweeps need the option list; Hydra checks those itself
            return []

    base = [(values(o) or [""])[0] if o.is_sweep_override() else (o.input_line or "") for o in parsed]
    variants = [[v for v in base if v]]
    for index, override in enumerate(parsed):
        for value in values(override)[1:] if override.is_sweep_override() else []:
            variants.append([v for v in base[:index] + [value] + base[index + 1 :] if v])
    return variants


def _keys_under(cfg: DictConfig | None, key: str) -> list[str]:
    parent, _, _ = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if (cfg is not None and parent) else cfg
    if not isinstance(node, DictConfig):
        return []
    return [f"{parent}.{k}" if parent else str(k) for k in node]


def describe_config_error(command: str, error: Exception, base_cfg: DictConfig | None) -> str:
    """One line for a composition error: the key or option at fault, and what to write instead."""
    if isinstance(error, MissingConfigException) and error.options:
        match = re.search(r"Could not find '([^']+)'", str(error))
        missing = match.group(1) if match else str(error.missing_cfg_file)
        group, _, option = missing.rpartition("/")
        close = difflib.get_close_matches(option, error.options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        extra = ""
        if group.startswith("hydra/launcher"):
            extra = " (launchers come with extras: pip install 'unetseg[joblib]' or 'unetseg[slurm]')"
        return f"{group}={option}: no such option; {hint}choose one of: {', '.join(sorted(error.options))}{extra}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key_match = re.search(r"Could not override '([^']+)'", str(error))
    if key_match or isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        full_key = key_match.group(1) if key_match else str(getattr(cause, "full_key", "") or "")
        candidates = _keys_under(base_cfg, full_key)
        close = closest_key(full_key, candidates, sorted(_dotted_keys(base_cfg)) if base_cfg is not None else [])
        hint = f"did you mean {close}? " if close else ""
        known = f"keys there: {', '.join(sorted(candidates))}" if candidates else f"see: unetseg {command} --cfg job"
        return f"{full_key}: no such key; {hint}{known}"
    if isinstance(cause, ValidationError):
        full_key = getattr(cause, "full_key", "") or ""
        message = str(cause).splitlines()[0]
        if "could not be converted to" in message or "Invalid value" in message:
            message += f"; see the expected types with: unetseg {command} --cfg job"
        return f"{full_key}: {message}" if full_key else message
    if isinstance(cause, InterpolationResolutionError):
        full_key = str(getattr(cause, "full_key", "") or "")
        message = str(cause).splitlines()[0]
        fix = "fix the ${...} in its value, or quote the value and write \\${ for a literal ${"
        return f"{full_key}: {message}; {fix}"
    if isinstance(cause, ConfigTypeError) and "does not support deletion" in str(cause):
        key = str(getattr(cause, "full_key", "") or "")
        return f"~{key}: {key} is required and cannot be deleted; set it instead ({key}=VALUE)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Ambiguous value for argument"):
        match = re.search(r"Ambiguous value for argument '(.*)'", lines[0])
        advice = quoting_advice(match.group(1)) if match else None
        if advice:
            return advice
        return lines[0].rstrip(".") + ": add -m to sweep over the values, or quote a list as key=[a,b]"
    return " ".join(lines[:2]) if lines else type(error).__name__


def closest_key(key: str, group_keys: list[str], all_keys: list[str]) -> str | None:
    """The key a typo most likely meant: the same last name in another group first (``trainer.lr`` →
    ``optim.lr``: the name was right, the group wrong), then a close spelling in the same group, then anywhere."""
    leaf = key.rpartition(".")[2]
    same_name = [k for k in all_keys if k.rpartition(".")[2] == leaf and k != key]
    if same_name:
        return same_name[0]
    close = difflib.get_close_matches(key, group_keys, n=1) or difflib.get_close_matches(key, all_keys, n=1)
    return close[0] if close else None


def _dotted_keys(cfg: DictConfig, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in cfg.items_ex(resolve=False):
        keys.add(f"{prefix}{key}")
        if isinstance(value, DictConfig):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
    return keys


def describe_parse_error(message: str, override: str | None = None) -> str:
    """One line for an override Hydra's grammar cannot read; ``override`` is the one it failed on."""
    match = re.search(r"Error parsing override '([^']*)'", message)
    if match and "missing EQUAL" in message:
        return f"'{match.group(1)}' is not an override: write KEY=VALUE or GROUP=OPTION (e.g. model=transposed)"
    advice = quoting_advice(override, any_value=True) if override else None
    if advice:
        return advice
    reason = " ".join(message.split("See https://")[0].split())
    if override is None:
        return reason
    if reason.startswith("LexerNoViableAltException"):
        reason = "a character it cannot read"
    reason = reason.replace(f"Error parsing override '{override}' ", "")
    return (
        f"{override}: Hydra cannot read this override ({reason}); quote a value that holds special characters, "
        "e.g. 'KEY=\"VALUE\"' or 'KEY=[a,\"b (1)\"]'"
    )


def preflight(command: str, overrides: list[str], multirun: bool) -> Path | None:
    """Compose and check every variant of the overrides; raise UserError on the first problem. Returns the run
    folder a single training run names with hydra.run.dir= (for the runner to claim before Hydra writes there)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=command):
        try:
            variants = _override_variants(command, overrides, multirun)
        except HydraException as error:
            override = error.override if isinstance(error, OverrideParseException) else None
            raise UserError(describe_parse_error(str(error), override)) from None
        base_cfg = compose(command)
        refuse_deletions_and_null_groups(command, OverridesParser.create().parse_overrides(overrides), base_cfg)
        for variant in variants:
            try:
                cfg = compose(command, overrides=variant)
                typed = to_typed(cfg)
            except (HydraException, OmegaConfBaseException, ValueError) as error:
                advice = _quoting_advice_for(error, variant)
                raise UserError(advice or describe_config_error(command, error, base_cfg)) from None
            extra = sorted(_dotted_keys(cfg) - _dotted_keys(OmegaConf.structured(typed)))
            if extra:
                raise UserError(
                    f"{extra[0]}: no such key in the schema; see the valid keys with unetseg {command} --cfg job"
                )
            CHECKS[command](typed)
            if not multirun:  # a sweep's jobs may run on other machines (Slurm): each checks its own device
                check_device_here(typed)
        if not multirun:
            # Unresolved: resolving would make this process's run stamp now (and export it to every child).
            run = compose(command, overrides=variants[0], return_hydra_config=True).hydra.run
            return check_run_folder(command, str(OmegaConf.to_container(run, resolve=False)["dir"]), typed)
    return None


def _quoting_advice_for(error: Exception, variant: list[str]) -> str | None:
    """Quoting advice when composing failed on a path Hydra misread (an unquoted "${" or ","), else None. A
    resolver that failed (``${oc.env:DATA}`` unset) was meant as one: its own message says more."""
    if isinstance(error, InterpolationResolutionError) and not isinstance(error, InterpolationKeyError):
        return None
    text = f"{error} {error.__cause__ or ''}"
    full_key = str(getattr(error, "full_key", "") or getattr(error.__cause__, "full_key", "") or "")
    for line in variant:
        advice = quoting_advice(line)
        key = line.lstrip("+~").partition("=")[0]
        if advice and (line in text or key == full_key):
            return advice
    return None


def refuse_deletions_and_null_groups(command: str, parsed: list[Override], base_cfg: DictConfig) -> None:
    """``~KEY`` and ``GROUP=null``: every key of unetseg's schema is required (Hydra's own errors for these
    say neither why nor what to write instead). Deleting an optional group (``~experiment``) is fine."""
    loader = GlobalHydra.instance().config_loader()
    keys = _dotted_keys(base_cfg)
    for override in parsed:
        key = override.key_or_group
        options = sorted(loader.get_group_options(key))
        choices = ", ".join(f"{key}={option}" for option in options)
        deletes = override.is_delete() and key.split(".")[0].split("/")[0] != "hydra"  # hydra.*: Hydra checks
        if deletes and key in keys:
            if options:
                raise UserError(
                    f"{override.input_line}: the {key} group is required and cannot be deleted; choose "
                    f"an option instead: {choices}"
                )
            null = f", or {key}=null" if _is_optional(base_cfg, key) else ""
            raise UserError(
                f"{override.input_line}: {key} is required and cannot be deleted; set it instead: {key}=VALUE{null} "
                f"(its default: unetseg {command} --cfg job)"
            )
        if deletes and not options:
            close = closest_key(key, _keys_under(base_cfg, key), sorted(keys))
            hint = f"did you mean {close}? " if close else ""
            raise UserError(f"{override.input_line}: no such key to delete; {hint}see unetseg {command} --cfg job")
        if not override.is_delete() and options and not override.is_sweep_override() and override.value() is None:
            raise UserError(
                f"{override.input_line}: {key} is a config group and takes an option, not null; choose one of: "
                f"{choices} (or leave {key} out for its default)"
            )


def _is_optional(cfg: DictConfig, key: str) -> bool:
    """Whether the schema lets ``key`` be null."""
    try:
        node: Any = cfg
        for part in key.split("."):
            node = node._get_node(part)
        return bool(node._is_optional())
    except Exception:  # not a node of cfg
        return False


def check_run_folder(command: str, pattern: str, typed: Any) -> Path | None:
    """Before Hydra makes the run folder (``pattern``: hydra.run.dir, unresolved) and writes its .hydra/ files
    there: a folder that cannot be made is one line, not Hydra's traceback; and for train, a fixed
    hydra.run.dir= that another command is writing, or that holds a training run this one does not resume, is
    refused (so nothing of that run is touched). A name made at the start (time and process id) is new."""
    fixed, made, _ = pattern.partition("${")
    run_dir = user_path(fixed or ".")
    existing = next(folder for folder in [run_dir, *run_dir.parents] if folder.exists())
    if not existing.is_dir():
        raise UserError(f"hydra.run.dir: {existing} is a file, not a folder; choose a folder for the run")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "the file system is read-only" if _read_only(existing) else "permission denied"
        raise UserError(
            f"cannot make the run folder in {existing}: {why}; run from a folder you can write to, "
            "or set hydra.run.dir=path/to/run"
        )
    if command != "train" or made:
        return None
    holder = folder_in_use(run_dir)
    if holder:
        raise UserError(f"hydra.run.dir={run_dir} is in use by {holder}: wait for it, or choose another hydra.run.dir")
    refuse_to_train_into(run_dir, typed.trainer.resume)
    refuse_run_among_data(run_dir, typed.data)
    return run_dir


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def guarded(command: str, task: Task) -> Callable[[DictConfig], dict[str, Any] | None]:
    """Wrap a command's task: the composed config becomes the checked, typed schema; bad input prints one
    line and exits 2; in a sweep, a failing job is recorded in its metrics.json (status failed) and the
    sweep goes on."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> dict[str, Any] | None:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
        try:
            typed = to_typed(cfg)
            CHECKS[command](typed)
            return task(typed, run_dir)
        except UserError as error:
            print_error(command, str(error))
            log.error("%s", error)
            if not in_sweep:
                _remove_if_empty_run(run_dir)
                sys.exit(EXIT_USER_ERROR)
            _record_failure(run_dir, str(error))
        except (MachineFault, OSError, MemoryError, RuntimeError) as error:
            if isinstance(error, MachineFault):
                message: str | None = str(error)
            elif isinstance(error, OSError):
                message = describe_storage_error(error)
            else:
                message = describe_out_of_memory(error)
            if message is None:
                raise
            print_error(command, message)
            if not in_sweep:
                _remove_if_empty_run(run_dir)
                sys.exit(EXIT_ENVIRONMENT)
            with contextlib.suppress(OSError):  # the disk may still be full
                _record_failure(run_dir, message)
        except Exception as error:
            if not in_sweep:
                raise
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
            message = f"{type(error).__name__}: {error} (traceback in {run_dir / 'error.log'})"
            print_error(command, message)
            _record_failure(run_dir, message)
        return None

    return run


def _remove_if_empty_run(run_dir: Path) -> None:
    """A run stopped by bad input before producing anything leaves no folder behind (only Hydra's
    .hydra/ and an almost empty log would be in it)."""
    if run_dir.is_dir() and all(p.name in (".hydra", LOCK_NAME) or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        # ... nor the outputs/<command>/ folders Hydra made for it, when nothing else is in them
        launch = Path.cwd()
        for parent in run_dir.parents[:2]:
            if launch not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty
                break


def _record_failure(run_dir: Path, message: str) -> None:
    sweep.record_failure()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "metrics.json", to_json({"status": "failed", "error": message}, indent=2), durable=True)


def run_command(command: str, task: Task, argv: list[str]) -> NoReturn:
    """Parse Hydra's flags, check the config, run the command under Hydra, and exit with its status."""
    register_resolvers()
    register_schemas()
    # A log file that cannot be written (a full disk) must not print a traceback per record: the command
    # reports the failing write itself, in one line.
    logging.raiseExceptions = False
    parser = get_args_parser()

    def one_line_error(message: str) -> NoReturn:
        print_error(command, f"{message}; see unetseg {command} --help")
        sys.exit(EXIT_USER_ERROR)

    parser.error = one_line_error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    modes = [
        name
        for name, on in (
            ("-m", args.multirun),
            ("--cfg", args.cfg),
            ("--info", args.info),
            ("-sc", args.shell_completion),
        )
        if on
    ]
    if len(modes) > 1:
        print_error(
            command,
            f"{' and '.join(modes)} cannot be combined: use one of them per call "
            f"(e.g. unetseg {command} --cfg hydra hydra/launcher=slurm to check a launcher config)",
        )
        sys.exit(EXIT_USER_ERROR)
    asks_hydra = args.help or args.hydra_help or args.shell_completion or args.info or args.cfg
    fixed_run_dir = None
    if not asks_hydra:
        try:
            fixed_run_dir = preflight(command, args.overrides, args.multirun)
        except UserError as error:
            print_error(command, str(error))
            sys.exit(EXIT_USER_ERROR)
    world = distributed.init_from_environment()
    claim: AbstractContextManager[object] = nullcontext()
    if fixed_run_dir is not None and world.is_main:  # claimed before Hydra writes its .hydra/ files there
        try:
            claim = claim_folder(fixed_run_dir, command, "choose another hydra.run.dir")
        except UserError as error:
            print_error(command, str(error))
            sys.exit(EXIT_USER_ERROR)
    if world.distributed:  # torchrun: one run directory for all ranks; only rank 0 prints and logs
        share_run_stamp(str(distributed.broadcast_from_main(run_stamp())))
        if not world.is_main:
            console.quiet = True
            argv = [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    sys.argv = [sys.argv[0], *argv]
    sweep.reset()
    with claim:
        hydra.main(config_path=config_dir(), config_name=command, version_base="1.3")(guarded(command, task))()
    # Leave the process group together: a rank that tears down gloo while another still uses it aborts.
    # (On an error the rank exits above and torchrun stops the others.)
    distributed.barrier()
    distributed.shutdown()
    sys.exit(1 if sweep.failed_jobs() else 0)
