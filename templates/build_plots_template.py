"""Regenerate templates/plots.html: DVC's plots page with vega, vega-lite and vega-embed inlined."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from dvc_render.vega import VegaRenderer

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "plots.html"
# Load order matters: vega-lite needs vega, vega-embed needs both.
PACKAGES = ("vega", "vega-lite", "vega-embed")
# dvc-render's own page takes these from a CDN; the inlined copies stand in for
# those <script src=...> tags, so the template has no {scripts} placeholder.
CDN_URL = re.compile(r"cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@([0-9][^\"/]*)")
SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)
# Strings dvc-render replaces in the template; none may occur inside the libraries.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {versions}: inlined by templates/build_plots_template.py so the page renders offline -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def expected_versions() -> dict[str, str]:
    """The vega package versions the installed dvc-render loads from its CDN."""
    versions = dict(CDN_URL.findall(VegaRenderer.SCRIPTS))
    if set(versions) != set(PACKAGES):
        raise SystemExit(f"unexpected dvc-render scripts: {VegaRenderer.SCRIPTS!r}")
    return versions


def fetch_build(package: str, version: str, workdir: Path) -> str:
    """The minified browser build of package@version, from the npm registry."""
    out = subprocess.run(
        ["npm", "pack", "--silent", f"{package}@{version}"],
        cwd=workdir, check=True, capture_output=True, text=True,
    ).stdout.split()[-1]
    with tarfile.open(workdir / out) as tar:
        member = tar.extractfile(f"package/build/{package}.min.js")
        assert member is not None
        text = member.read().decode("utf-8")
    # A source map comment would make browser dev tools request a file that is not there.
    text = SOURCE_MAP.sub("", text).strip()
    # Inside <script>, "</script" or "<!--" would end or derail the element early.
    for bad in ("</script", "<!--", *PLACEHOLDERS):
        if bad in text.lower():
            raise SystemExit(f"{package}@{version} contains {bad!r}; cannot inline it as is")
    return text


def build() -> str:
    """The full template text."""
    versions = expected_versions()
    with tempfile.TemporaryDirectory() as tmp:
        builds = {name: fetch_build(name, versions[name], Path(tmp)) for name in PACKAGES}
    scripts = "\n".join(
        f'    <script data-package="{name}@{versions[name]}">{builds[name]}</script>' for name in PACKAGES
    )
    pinned = ", ".join(f"{name}@{versions[name]}" for name in PACKAGES)
    return PAGE.format(versions=pinned, scripts=scripts)


def main() -> None:
    """Write the template."""
    TEMPLATE.write_text(build(), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
