"""Import checks in a fresh interpreter: modules that must load with some packages blocked."""

import subprocess
import sys


def assert_imports_without(blocked: tuple[str, ...], statements: str) -> None:
    """Run `statements` (imports) in a new Python with every package in `blocked` made unimportable
    (sys.modules[name] = None), and assert none of them was loaded on the way."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        f"{statements}\n"
        f"assert not any(m.split('.')[0] in {blocked!r} and sys.modules[m] is not None for m in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
