"""Scenario files: `benchmarks/scenarios/*.toml`, one benchmark each.

name = "encode"              # what --scenario selects
title = "..."                # the report's heading
handler = "encode"           # the module that runs it (see runner.HANDLERS)
order = 10                   # run order (lower first)
warmup_s = 0.5               # untimed load before each measurement
duration_s = 3.0             # timed window of each measurement
[params]                     # handler-specific settings (sweeps, models, depths)
[quick]                      # overrides for --quick (same keys, params merged key by key)
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file is malformed or names an unknown scenario."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    handler: str
    order: int
    warmup_s: float
    duration_s: float
    params: dict[str, Any]
    path: Path

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


def _parse(path: Path, quick: bool) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    overrides = raw.pop("quick", {}) if quick else {}
    raw.pop("quick", None)
    params = dict(raw.get("params", {}))
    params.update(overrides.pop("params", {}))
    merged = {**raw, **overrides}
    missing = [k for k in ("name", "handler") if k not in merged]
    if missing:
        raise ScenarioError(f"{path}: missing {', '.join(missing)}")
    return Scenario(
        name=str(merged["name"]),
        title=str(merged.get("title", merged["name"])),
        handler=str(merged["handler"]),
        order=int(merged.get("order", 100)),
        warmup_s=float(merged.get("warmup_s", 0.5)),
        duration_s=float(merged.get("duration_s", 2.0)),
        params=params,
        path=path,
    )


def load_scenarios(
    quick: bool, names: list[str] | None = None, directory: Path = SCENARIO_DIR
) -> list[Scenario]:
    """The scenarios in `directory`, in run order; `names` selects some (unknown names fail)."""
    scenarios = sorted(
        (_parse(p, quick) for p in sorted(directory.glob("*.toml"))),
        key=lambda s: (s.order, s.name),
    )
    if names:
        known = {s.name for s in scenarios}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ScenarioError(
                f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        scenarios = [s for s in scenarios if s.name in names]
    return scenarios
