"""Python started in the repository root must import the libraries llmctl uses, not llmctl's own folders.

`python3 -m pytest` and `python3 -c ...` put the current directory first on sys.path. The repository root is
the llmctl package, so its top-level folders (cli/, core/, kernels/, model_defs/) are visible there as
top-level names too; transformers imports the PyPI package `kernels`, which a regular package of that name
in the root would shadow. The folders are implicit namespace packages instead, which lose to any regular
package of the same name elsewhere on sys.path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_top_level_folder_is_a_regular_package():
    shadowing = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert shadowing == [], f"{shadowing} would shadow PyPI packages of the same name for Python started in the root"


def test_python_started_in_the_root_imports_the_real_libraries():
    code = (
        "import importlib.util, sys\n"
        "import torch, triton, transformers\n"
        "transformers.LlamaConfig, transformers.AutoModelForCausalLM\n"
        "import transformers.activations\n"  # imports the kernel hub's `kernels` package when installed
        "import llmctl, llmctl.cli.app, llmctl.kernels.rmsnorm, llmctl.core.engine.llm\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "root = sys.argv[1]\n"
        "if spec is not None and spec.origin is not None:\n"
        "    assert not spec.origin.startswith(root), spec.origin\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
