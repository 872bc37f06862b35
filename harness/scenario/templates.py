"""Rendering of the jinja2 scenario templates in ``bench/scenarios`` (and loading the result).

Templates see these globals, registered here for address arithmetic:

``pod_ip(node, host)``
    The *host*-th address (1-254) of node *node*'s pod CIDR, ``node_pod_cidr_v4``.
``service_vip(index)``
    The *index*-th usable address (0-based) of SERVICE_CIDR_V4: 0 → 198.19.0.1.
``pod_ip6(node, host)``
    The same host's IPv6 address in ``node_pod_cidr_v6``.
``service_vip(index)`` ... as above; ``external_vip(index)``
    The *index*-th address (0-based, up to 8,189) of EXTERNAL_VIP_CIDR_V4
    (198.19.160.0/19, outside the service CIDR): externalIPs and load-balancer
    ingress IPs.
``SERVICE_VIPS``
    How many usable addresses SERVICE_CIDR_V4 has (32,766).
``fail(message)``
    Abort rendering with a one-line ScenarioError (parameter checks).

Rendering uses StrictUndefined, and a parameter the template never mentions is
an error (it would otherwise be ignored silently, e.g. a typo like ``service=``).
``render_template`` finds a template by name in ``bench/scenarios``;
``render_template_file`` renders one anywhere (its includes resolve beside it).
"""
from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from harness.paths import SCENARIO_DIR
from harness.addressing import (EXTERNAL_VIP_CIDR_V4, SERVICE_CIDR_V4, AddressPlanError,
                                node_pod_cidr_v4, node_pod_cidr_v6)
from harness.scenario.errors import ScenarioError
from harness.scenario.model import Scenario
from harness.scenario.load import load_scenario_text

__all__ = ["SCENARIO_DIR", "render_template", "render_template_file", "load_template_scenario",
           "template_path"]


_SERVICE_BASE = int(SERVICE_CIDR_V4.network_address) + 1
SERVICE_VIPS = SERVICE_CIDR_V4.num_addresses - 2


class _TemplateFailure(Exception):
    """Raised by the ``fail()`` template global."""


def _fail(message: str) -> None:
    raise _TemplateFailure(message)


@functools.lru_cache(maxsize=None)
def _pod_ip(node: int, host: int) -> str:
    if not 1 <= host <= 254:
        raise _TemplateFailure(f"pod host index {host} out of range 1-254")
    try:
        return str(node_pod_cidr_v4(node)[host])
    except AddressPlanError as err:
        raise _TemplateFailure(str(err)) from None


@functools.lru_cache(maxsize=None)
def _pod_ip6(node: int, host: int) -> str:
    if not 1 <= host <= 254:
        raise _TemplateFailure(f"pod host index {host} out of range 1-254")
    try:
        return str(node_pod_cidr_v6(node)[host])
    except AddressPlanError as err:
        raise _TemplateFailure(str(err)) from None


_EXTERNAL_VIPS = EXTERNAL_VIP_CIDR_V4.num_addresses - 2


def _external_vip(index: int) -> str:
    if not 0 <= index < _EXTERNAL_VIPS:
        raise _TemplateFailure(f"external VIP index {index} out of range 0-{_EXTERNAL_VIPS - 1}")
    return str(EXTERNAL_VIP_CIDR_V4[index + 1])


def _service_vip(index: int) -> str:
    if not 0 <= index < SERVICE_VIPS:
        raise _TemplateFailure(f"service VIP index {index} out of range 0-{SERVICE_VIPS - 1}")
    return str(ipaddress.IPv4Address(_SERVICE_BASE + index))


@functools.lru_cache(maxsize=None)
def _environment(directory: Path = SCENARIO_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.globals.update(pod_ip=_pod_ip, pod_ip6=_pod_ip6, service_vip=_service_vip,
                       external_vip=_external_vip, SERVICE_VIPS=SERVICE_VIPS, fail=_fail)
    return env


def template_path(name: str) -> Path:
    """The template file for *name* (``services``, ``services.yaml`` or ``services.yaml.j2``)."""
    candidates = [name] if name.endswith(".j2") else [f"{name}.j2", f"{name}.yaml.j2"]
    for candidate in candidates:
        path = SCENARIO_DIR / candidate
        if path.is_file() and path.resolve().parent == SCENARIO_DIR:
            return path
    raise ScenarioError(f"no template {name!r} in {SCENARIO_DIR}", source=name)


@functools.lru_cache(maxsize=None)
def _parameters(env: jinja2.Environment, filename: str) -> frozenset[str]:
    source = env.loader.get_source(env, filename)[0]  # type: ignore[union-attr]
    return frozenset(jinja2.meta.find_undeclared_variables(env.parse(source))) - set(env.globals)


def _source_name(path: Path, params: dict[str, Any], shown_path: str | None = None) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(params.items()))
    return (shown_path or f"bench/scenarios/{path.name}") + (f"[{shown}]" if shown else "")


def render_template(name: str, /, **params: Any) -> str:
    """Render ``bench/scenarios/<name>[.yaml].j2`` with *params*; one-line ScenarioError on failure."""
    path = template_path(name)
    return _render(path, _source_name(path, params), params)


def render_template_file(path: str | Path, /, **params: Any) -> tuple[str, str]:
    """Render the template file *path* with *params*: (text, source name for errors).
    One-line ScenarioError on failure, also for a file that cannot be read."""
    path = Path(path)
    in_tree = path.resolve().parent == SCENARIO_DIR
    source = _source_name(path, params, None if in_tree else str(path))
    if not path.is_file():
        raise ScenarioError("no such file" if not path.exists() else "not a file", source=str(path))
    return _render(path, source, params), source


def _render(path: Path, source: str, params: dict[str, Any]) -> str:
    env = _environment(path.resolve().parent)
    try:
        accepted = _parameters(env, path.name)
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ScenarioError(f"unknown template parameter {unknown[0]!r} (accepted: {', '.join(sorted(accepted))})",
                                source=source)
        return env.get_template(path.name).render(**params)
    except _TemplateFailure as err:
        raise ScenarioError(str(err), source=source) from None
    except jinja2.UndefinedError as err:
        raise ScenarioError(f"template error: {err.message}", source=source) from None
    except jinja2.TemplateSyntaxError as err:
        raise ScenarioError(f"template syntax error: {err.message}", source=source, line=err.lineno) from None
    except UnicodeDecodeError as err:
        raise ScenarioError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=source) from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as err:
        raise ScenarioError(f"template error: {err}", source=source) from None
    except OSError as err:
        raise ScenarioError(f"cannot read: {err.strerror or err}", source=source) from None


def load_template_scenario(name: str, /, **params: Any) -> Scenario:
    """Render a template and load the result as a Scenario."""
    text = render_template(name, **params)
    return load_scenario_text(text, source=_source_name(template_path(name), params))
