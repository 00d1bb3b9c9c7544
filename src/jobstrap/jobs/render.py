"""Job scripts from templates: a Jinja2 environment over ``templates/``.

Undefined variables are errors (``StrictUndefined``), and every value that reaches the
shell goes through the ``quote`` filter (``shlex.quote``). Directives come ready-made
from ``systems/``; this module only puts the pieces in their place.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

import jinja2

from jobstrap._version import __version__
from jobstrap.config import resources
from jobstrap.errors import ConfigError
from jobstrap.jobs.launchers import launch_argv
from jobstrap.jobs.model import JobSpec
from jobstrap.systems import BatchSystem


def quote(value: object) -> str:
    """Shell-quote one value (the template filter ``quote``)."""
    return shlex.quote(str(value))


def quote_argv(values: Iterable[object]) -> str:
    """Shell-quote and join an argv (the template filter ``argv``)."""
    return shlex.join(str(v) for v in values)


def environment(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> jinja2.Environment:
    """The template environment: user directories first, then the shipped templates.

    One environment per search path, kept: it caches the compiled templates (checking
    their files' modification times), so a submission does not parse them again.
    """
    return _environment(tuple(str(d) for d in extra_dirs))


@functools.lru_cache(maxsize=16)
def _environment(extra_dirs: tuple[str, ...]) -> jinja2.Environment:
    search = [*extra_dirs, str(resources.templates_dir())]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # shell, not HTML: quoting is explicit through |quote
    )
    env.filters["quote"] = quote
    env.filters["argv"] = quote_argv
    return env


def render_script(spec: JobSpec, system: BatchSystem, *, template: str | None = None) -> str:
    """Render the job script for ``spec`` on ``system``.

    Parameters
    ----------
    spec
        The job to render.
    system
        The batch system's builders (``jobstrap.systems.get_system(name)``).
    template
        A template file of the user's own (it may ``{% extends "base.sh.j2" %}``);
        default ``templates/<system>.sh.j2``.

    Raises
    ------
    ConfigError
        The template is missing or uses a variable that does not exist.
    """
    extra: list[str] = []
    name = f"{system.name}.sh.j2"
    if template:
        path = Path(template).expanduser()
        if not path.is_file():
            raise ConfigError("template", template, "no such file")
        extra.append(str(path.parent))
        name = path.name
    python_dir = os.path.dirname(spec.python) if os.path.isabs(spec.python) else ""
    context = {
        "version": __version__,
        "system": system.name,
        "spec": spec,
        "role": spec.role.value,
        "shebang": spec.shebang,
        "directives": system.directives(spec),
        "setup": system.script_setup(spec),  # type: ignore[attr-defined]
        "job_id_variable": system.job_id_variable,
        "array_task_variable": system.array_task_variable,
        "env": list(spec.env),
        "python_dir": python_dir,
        "prologue": list(spec.prologue),
        "epilogue": list(spec.epilogue),
        "command": launch_argv(spec),
        "log_directory": spec.log_directory,
        "run_dir": spec.run_dir,
    }
    try:
        return environment(extra).get_template(name).render(context)
    except jinja2.UndefinedError as error:
        raise ConfigError("template", template or name, f"undefined variable: {error}") from None
    except jinja2.TemplateNotFound as error:
        raise ConfigError("template", template or name, f"template not found: {error}") from None
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError(
            "template", template or name, f"syntax error line {error.lineno}: {error.message}"
        ) from None
