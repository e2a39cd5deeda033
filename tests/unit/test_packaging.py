"""Packaging for a plugin (issue 8 item 9): setup.cfg holds compatible ranges, constraints.txt the exact tested set
that ``make install`` (and so ``make test`` / ``.ci/run``) installs with, and the ``vllm`` extra fits the torch
range."""
from __future__ import annotations

import configparser
import re

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

#: What vLLM's wheels declare (``Requires-Dist`` of their METADATA), looked up on PyPI on 2026-12-04 with
#: ``pip install --dry-run --no-deps --report r.json vllm==X`` (metadata only) and copied here by hand:
#: version -> (torch pin, torchvision pin, transformers specifier).
VLLM_REQUIRES = {
    "0.32.0": ("2.13.0", "0.28.0", ">=5.16.1,<5.20.0"),
    "0.33.0": ("2.14.0", "0.29.0", ">=5.16.1,<5.21.0"),
    "0.34.0": ("2.14.0", "0.29.0", ">=5.16.1,<5.23.0"),
}
#: Lower bounds below the tested pin, and why (setup.cfg says the same): the torch-2.14 vLLM releases pin torch
#: 2.14.0 / torchvision 0.29.0, and their mistral-common dependency needs numpy<2.4 on Python <= 3.12.
LOWER_BELOW_PIN = {"torch": "2.14.0", "torchvision": "0.29.0", "numpy": "2.3.0"}


def _setup_cfg(repo_root) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(repo_root / "setup.cfg")
    return cfg


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line.strip()) for line in text.strip().splitlines() if line.strip()]


def _ranges(repo_root) -> dict[str, Requirement]:
    """install_requires + the dev extra, by canonical name."""
    cfg = _setup_cfg(repo_root)
    reqs = _requirements(cfg["options"]["install_requires"]) + _requirements(cfg["options.extras_require"]["dev"])
    return {canonicalize_name(r.name): r for r in reqs}


def _pins(repo_root) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for n, line in enumerate((repo_root / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"constraints.txt:{n}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt:{n}: {name} pinned twice"
        pins[name] = Version(m.group(2))
    return pins


def _bounds(spec: SpecifierSet) -> tuple[Version | None, Version | None]:
    lower = [Version(s.version) for s in spec if s.operator == ">="]
    upper = [Version(s.version) for s in spec if s.operator == "<"]
    return (lower[0] if len(lower) == 1 else None), (upper[0] if len(upper) == 1 else None)


def test_install_requires_are_ranges_that_contain_the_constraints_pins(repo_root):
    """issue 8 item 9: every install_requires / dev requirement is a range ``>=L,<U`` (no exact pin) whose lower
    bound is the tested version from constraints.txt (torch/torchvision/numpy: see LOWER_BELOW_PIN) and
    which contains that pin; constraints.txt pins every one of them exactly, and never the plugin itself."""
    ranges, pins = _ranges(repo_root), _pins(repo_root)
    assert "coordexp-swift" not in pins
    assert {"torch", "torchvision", "ms-swift", "transformers", "deepspeed", "pytest"} <= set(ranges)
    for name, req in ranges.items():
        assert not any(s.operator in ("==", "===", "~=") for s in req.specifier), f"{name}: {req} is a pin"
        lower, upper = _bounds(req.specifier)
        assert lower is not None and upper is not None and lower < upper, f"{name}: {req} needs >=L,<U"
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req}"
        assert lower == Version(LOWER_BELOW_PIN.get(name, str(pins[name]))), (name, lower, pins[name])


def test_torch_and_torchvision_stay_a_matching_pair(repo_root):
    """issue 8 item 9: torchvision 0.N is built for torch 2.(N-15) (0.29 <-> 2.14); the pins and both ends of the
    ranges keep that pairing."""
    ranges, pins = _ranges(repo_root), _pins(repo_root)

    def minor(v: Version) -> int:
        return v.release[1]
    assert pins["torch"].major == 2 and pins["torchvision"].major == 0
    assert minor(pins["torchvision"]) == minor(pins["torch"]) + 15
    (t_lo, t_hi), (v_lo, v_hi) = _bounds(ranges["torch"].specifier), _bounds(ranges["torchvision"].specifier)
    assert (minor(v_lo), minor(v_hi)) == (minor(t_lo) + 15, minor(t_hi) + 15)


def test_vllm_extra_fits_the_torch_range(repo_root):
    """issue 8 item 9: the vllm extra admits exactly the looked-up vLLM releases whose exact torch / torchvision pins
    lie in setup.cfg's ranges and whose transformers range contains the tested transformers; its upper bound stops
    before releases not looked up (they may pin a newer torch)."""
    cfg = _setup_cfg(repo_root)
    (vllm,) = _requirements(cfg["options.extras_require"]["vllm"])
    ranges, pins = _ranges(repo_root), _pins(repo_root)
    fitting = {v for v, (torch_pin, tv_pin, tf_spec) in VLLM_REQUIRES.items()
               if ranges["torch"].specifier.contains(torch_pin) and ranges["torchvision"].specifier.contains(tv_pin)
               and SpecifierSet(tf_spec).contains(pins["transformers"])}
    assert fitting == {"0.33.0", "0.34.0"}
    assert {v for v in VLLM_REQUIRES if vllm.specifier.contains(v)} == fitting
    _, upper = _bounds(vllm.specifier)
    assert upper is not None and upper <= Version("0.35")
    assert "vllm" not in pins  # not in the tested CPU set


def test_make_install_uses_the_constraints(repo_root):
    """issue 8 item 9: the Makefile's install recipe (which ``make test`` and so ``.ci/run`` run) installs every
    package with ``-c constraints.txt`` and names no version itself; it re-runs when constraints.txt changes."""
    make = (repo_root / "Makefile").read_text()
    m = re.search(r"^\$\(STAMP\): (.*)\n((?:\t.*\n)+)", make, re.M)
    assert m and "constraints.txt" in m.group(1).split()
    installs = [line for line in m.group(2).splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 2
    for line in installs:
        assert "-c constraints.txt" in line and "==" not in line, line
    assert re.search(r"^install: \$\(STAMP\)", make, re.M) and re.search(r"^test: \$\(STAMP\)", make, re.M)
    assert "make test" in (repo_root / ".ci" / "run").read_text()
