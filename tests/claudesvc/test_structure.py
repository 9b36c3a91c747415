"""The structure is checked, not hoped for: no import circle between modules.

import-linter (``make lint``) holds the layers and the forbidden imports; this
checks what its contracts cannot express across apps: no module reaches itself
through its imports, function-level imports included (grimp, import-linter's
own graph).
"""

from __future__ import annotations

import grimp

PACKAGES = ("claudesvc", "apikeys", "jobs", "transcription", "console")


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph(*PACKAGES)
    modules = {m for m in graph.modules if ".migrations" not in m}
    circles = sorted(
        {
            tuple(sorted((importer, imported)))
            for importer in modules
            for imported in graph.find_modules_directly_imported_by(importer) & modules
            if imported != importer and graph.chain_exists(importer=imported, imported=importer)
        }
    )
    assert circles == [], "import circles (a pair that reaches each other): " + ", ".join(
        f"{a} <-> {b}" for a, b in circles
    )
