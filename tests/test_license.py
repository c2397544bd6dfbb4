"""The licence pyproject.toml declares is the one shipped in LICENSE."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_license_file_matches_the_declared_license():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text.splitlines()[1] and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_citation_file_names_this_version_and_licence():
    """CITATION.cff (how to cite chdl and the DIFFUMA paper) follows the package: its version and licence."""
    import yaml

    import chdl

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == chdl.__version__  # (bump both together)
    assert cff["license"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert {"title", "authors", "message"} <= set(cff)
    paper = cff["references"][0]
    assert paper["title"].startswith("DIFFUMA: High-Fidelity") and paper["authors"][0]["family-names"] == "Xie"
    # only keys the CFF 1.2.0 schema allows where they stand (an affiliation on the reference made the file invalid
    # for GitHub's "Cite this repository" and cffconvert)
    person = {"family-names", "given-names", "name-particle", "name-suffix", "affiliation", "email", "orcid"}
    assert set(cff) <= {"cff-version", "message", "title", "type", "authors", "version", "license", "abstract",
                        "keywords", "references", "repository-code", "url", "doi", "date-released"}
    assert all(set(a) <= {"name"} | person for a in cff["authors"])
    assert set(paper) <= {"type", "title", "authors", "notes", "year", "journal", "doi", "url", "abstract"}
    assert all(set(a) <= person for a in paper["authors"])
