"""What the Slicer module needs from the Python it runs in, and how it gets it.

- The supported Slicer: 5.10 and later (Python 3.12); ``unsupported_slicer`` is the one sentence an older
  one is refused with.
- The library's requirements (its pyproject.toml beside the sources, as the extension ships them), and of
  these which are missing or too old: ``install_plan``. Torch comes through SlicerPyTorch with a version
  requirement (it picks the build for the machine's GPU); SimpleITK, pydicom and numpy are Slicer's own
  (its SimpleITK build, its pinned pydicom 2.4.4 and numpy) and are never installed or replaced; everything
  else missing is installed by pip with a constraints file that holds those four at their installed
  versions, so that no dependency of a new package can replace them.
- Whether a package that is already imported was upgraded, so that Slicer must restart: ``loaded_upgrades``.
- DICOM output needs dcmqi, whose wheels are for Linux and Windows: installed there like the rest, and
  elsewhere (macOS) ``dicom_output_unavailable`` is the one sentence that says so.

This module imports only the standard library (and ``packaging``, which Slicer ships) and parses under
Python 3.9, so that it runs before anything is installed, and on an unsupported Slicer says so instead of
failing on an import.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_SLICER = (5, 10)
SUPPORTED_PYTHON = (3, 12)
TORCH = "torch"
SLICER_OWN = ("SimpleITK", "pydicom", "numpy")  # never installed or replaced
DCMQI_PLATFORMS = ("linux", "win32")  # where dcmqi, which writes the DICOM objects, has wheels


def dicom_output_unavailable(platform: str | None = None) -> str | None:
    """The sentence saying that DICOM output cannot be written on ``platform`` (``sys.platform``), or None."""
    platform = platform or sys.platform
    if platform.startswith(DCMQI_PLATFORMS):
        return None
    system = "macOS" if platform == "darwin" else platform
    return (f"DICOM output is unavailable on {system}: dcmqi, which writes the DICOM objects, has wheels for Linux "
            "and Windows only (NRRD and NIfTI are written).")


def unsupported_slicer(slicer_version, python_version=None) -> str | None:
    """The sentence that refuses a Slicer older than 5.10 or a Python older than 3.12, or None."""
    python_version = tuple(python_version or sys.version_info)[:2]
    slicer_version = tuple(int(v) for v in slicer_version[:2])
    if slicer_version >= SUPPORTED_SLICER and python_version >= SUPPORTED_PYTHON:
        return None
    return (f"XAIExplain needs 3D Slicer {'.'.join(map(str, SUPPORTED_SLICER))} or later (Python "
            f"{'.'.join(map(str, SUPPORTED_PYTHON))}); this is Slicer {'.'.join(map(str, slicer_version))} with "
            f"Python {'.'.join(map(str, python_version))}, so the module is switched off: install a newer Slicer.")


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def library_requirements(pyproject: Path | None = None) -> list[str]:
    """The library's dependencies as requirement strings: from the pyproject.toml beside its sources (the
    extension folder, a checkout), else from the installed distribution's metadata."""
    pyproject = pyproject or Path(__file__).resolve().parents[3] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        return list(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"])
    return [r for r in importlib.metadata.requires("xaiexplain") or [] if "extra ==" not in r]


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class InstallPlan:
    """What to install: ``torch_requirement`` (a version specifier for SlicerPyTorch) when torch is missing
    or too old, ``pip_requirements`` for the other missing packages, and ``problems``: Slicer's own packages
    missing or too old, which nothing here may install (one sentence each)."""

    torch_requirement: str | None
    pip_requirements: list[str]
    problems: list[str]
    installed: dict[str, str | None] = field(default_factory=dict)  # normalized name -> version, before
    notes: list[str] = field(default_factory=list)  # what this platform goes without (DICOM output on macOS)

    @property
    def needed(self) -> bool:
        return bool(self.torch_requirement or self.pip_requirements)

    def pip_arguments(self, constraints_file) -> list[str]:
        """The argument list for ``slicer.util.pip_install``: a list, so that no path or specifier is split
        or unescaped (a string goes through shlex.split, which mangles ``C:\\Users\\John Doe``)."""
        return ["--constraint", str(constraints_file), *self.pip_requirements]

    def summary(self) -> str:
        names = ([f"PyTorch ({TORCH}{self.torch_requirement}, through SlicerPyTorch)"] if self.torch_requirement
                 else []) + self.pip_requirements
        return ", ".join(names)


def install_plan(requirements: list[str], version_of=installed_version, platform: str | None = None) -> InstallPlan:
    """Which of ``requirements`` are missing or too old, by ``version_of(name)`` (the installed version
    or None), on ``platform`` (``sys.platform``; its markers decide, e.g. dcmqi's)."""
    from packaging.requirements import Requirement

    own = {normalized(name) for name in SLICER_OWN}
    torch_requirement, to_install, problems, installed = None, [], [], {}
    platform = platform or sys.platform
    unavailable = dicom_output_unavailable(platform)
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"sys_platform": platform}):
            continue
        name = normalized(requirement.name)
        version = installed[name] = version_of(requirement.name)
        if version is not None and requirement.specifier.contains(version, prereleases=True):
            continue
        if name == TORCH:
            torch_requirement = str(requirement.specifier)
        elif name in own:
            found = f"has {requirement.name} {version}" if version else f"has no {requirement.name}"
            problems.append(f"XAIExplain needs {text}, which Slicer provides, but this Slicer {found}; install "
                            f"Slicer {'.'.join(map(str, SUPPORTED_SLICER))} or later.")
        else:
            to_install.append(text)
    return InstallPlan(torch_requirement, to_install, problems, installed, [unavailable] if unavailable else [])


def constraints(version_of=installed_version) -> str:
    """pip constraints that hold Slicer's own packages and torch at their installed versions."""
    lines = [f"{name}=={version}" for name in (*SLICER_OWN, TORCH) if (version := version_of(name)) is not None]
    return "".join(line + "\n" for line in lines)


def loaded_upgrades(before: dict, version_of=installed_version, modules=None) -> list[str]:
    """The distributions whose installed version changed since ``before`` (normalized name -> version) and
    of which a module is already imported: Slicer must restart to use the new version."""
    modules = sys.modules if modules is None else modules
    loaded = set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module in modules:
            loaded.update(normalized(d) for d in distributions)
    return sorted(name for name, version in before.items()
                  if version is not None and name in loaded and version_of(name) != version)


def _applicable(requirements: list[str]):
    """The requirements whose markers hold here, parsed."""
    from packaging.requirements import Requirement

    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate():
            yield text, requirement


def package_report(requirements: list[str], version_of=installed_version) -> list[str]:
    """One line per requirement: what the library asks for and what is installed (the panel's log)."""
    return [f"{text}: {version_of(requirement.name) or 'not installed'}"
            for text, requirement in _applicable(requirements)]


def upgrade_arguments(requirements: list[str], constraints_file) -> list[str]:
    """``slicer.util.pip_install`` arguments that upgrade the library's third-party packages to the newest
    versions its requirements allow: never torch (SlicerPyTorch's) nor Slicer's own, held by the
    constraints."""
    never = {normalized(name) for name in (*SLICER_OWN, TORCH)}
    return ["--upgrade", "--upgrade-strategy", "only-if-needed", "--constraint", str(constraints_file),
            *(text for text, requirement in _applicable(requirements) if normalized(requirement.name) not in never)]


def failure_sentence(error: BaseException) -> str:
    """One sentence for a failure the panel shows: a failed pip or PyTorch install (CalledProcessError,
    with its last line of output), a file that cannot be read or written, or any other error's message."""
    import subprocess

    if isinstance(error, subprocess.CalledProcessError):
        command = error.cmd if isinstance(error.cmd, str) else " ".join(map(str, error.cmd or []))
        output = error.output.decode("utf-8", "replace") if isinstance(error.output, bytes) else error.output
        last = [line for line in (output or "").splitlines() if line.strip()][-1:]
        return f"{command} failed with exit status {error.returncode}" + (f": {last[0].strip()}" if last else "")
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return str(error) or type(error).__name__
