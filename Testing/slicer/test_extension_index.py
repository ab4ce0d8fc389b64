"""What the Slicer Extensions Index checks before it accepts an extension (its
``scripts/check_description_files.py`` and the catalog entry schema v1.0.2), checked on this repository
without the network: a license file at the root, a complete description file named after the CMake
project, a known category, the PyTorch dependency declared, a repository name with "Slicer" in it, and
icon and screenshot URLs that name files which are in the repository."""
import json
import re
import urllib.parse

import pytest
from helpers import REPOSITORY

DESCRIPTION = REPOSITORY / "XAIExplain.json"
CMAKE = REPOSITORY / "CMakeLists.txt"
REPOSITORY_NAME = "SlicerXAIExplain"  # the index's rule: the repository's name holds "Slicer"
# the license file names the index looks for at the repository root
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# the properties of the catalog entry schema v1.0.2 (additionalProperties: false) and its required ones
SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
# a few of the index's accepted categories (its ACCEPTED_EXTENSION_CATEGORIES), the ones that could fit
KNOWN_CATEGORIES = {"Analysis", "Informatics", "Quantification", "Segmentation", "Utilities"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cmake_value(name: str) -> str:
    """A ``set(NAME "value")`` of the top-level CMakeLists.txt, read as the index's check reads it."""
    match = re.search(rf'set\s*\({name}\s*"([^"]+)"[ ]*\)', CMAKE.read_text(), re.IGNORECASE)
    assert match, f"no {name} in CMakeLists.txt"
    return match.group(1)


@pytest.fixture(scope="module")
def description() -> dict:
    return json.loads(DESCRIPTION.read_text())


def test_a_license_file_at_the_root_says_what_the_library_declares():
    found = [name for name in LICENSE_NAMES if (REPOSITORY / name).is_file()]
    assert found, "no license file in the repository root"
    text = (REPOSITORY / found[0]).read_text()
    assert "Apache License" in text and "Version 2.0" in text
    pyproject = (REPOSITORY / "XAIExplainLib" / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"', pyproject, re.MULTILINE)


def test_the_description_file_is_complete_and_named_after_the_project(description):
    project = re.search(r"project\s*\(\s*([^\s)]+)", CMAKE.read_text(), re.IGNORECASE).group(1)
    assert DESCRIPTION.stem == project == "XAIExplain"
    assert SCHEMA_REQUIRED <= set(description) <= SCHEMA_PROPERTIES
    assert description["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                             "slicer-extension-catalog-entry-schema-v1.0.2.json")
    assert isinstance(description["scm_revision"], str) and description["scm_revision"]
    assert description["category"] in KNOWN_CATEGORIES
    assert description["category"] == _cmake_value("EXTENSION_CATEGORY")


def test_the_pytorch_dependency_is_declared_for_the_build_and_the_extension(description):
    assert description["build_dependencies"] == ["PyTorch"]
    assert _cmake_value("EXTENSION_DEPENDS").split() == description["build_dependencies"]


def test_the_repository_follows_the_index_naming_rule(description):
    url = urllib.parse.urlsplit(description["scm_url"])
    assert url.scheme in ("git", "https")
    name = url.path.rstrip("/").split("/")[-1].removesuffix(".git")
    assert "slicer" in name.lower() and name == REPOSITORY_NAME
    assert urllib.parse.urlsplit(_cmake_value("EXTENSION_HOMEPAGE")).path.startswith(url.path)


def test_the_icon_and_screenshots_are_files_of_this_repository(description):
    """The index downloads these URLs: each must name a PNG file of this repository at the revision the
    description gives (raw.githubusercontent.com/OWNER/REPOSITORY/REVISION/PATH)."""
    owner_and_name = urllib.parse.urlsplit(description["scm_url"]).path.strip("/").removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{owner_and_name}/{description['scm_revision']}/"
    icon = _cmake_value("EXTENSION_ICONURL")
    screenshots = _cmake_value("EXTENSION_SCREENSHOTURLS").split()
    assert screenshots
    for url in [icon, *screenshots]:
        assert url.startswith(prefix), url
        path = REPOSITORY / url.removeprefix(prefix)
        assert path.is_file(), f"{url} names {path}, which is not in the repository"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG image"
    # the extension's icon is the module's icon, which the module's CMakeLists.txt installs
    assert icon.endswith("XAIExplain/Resources/Icons/XAIExplain.png")
    assert "Resources/Icons/${MODULE_NAME}.png" in (REPOSITORY / "XAIExplain" / "CMakeLists.txt").read_text()
