"""Remove joblog's own entry from the compiled lock files (`make lock`).

The extras name joblog itself (test = ["joblog[local]", ...]), so pip-compile lists
`joblog @ file:///...` with a machine's path and no hash, which --require-hashes refuses.
joblog is installed from the work tree after the lock, with --no-deps.
"""
import re
import sys

for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"# WARNING: pip install will require the following package to be hashed\.\n(#.*\n)*joblog @ .*\n(    #.*\n)*", "", text)
    text = re.sub(r"\n    #   joblog(?: \(pyproject\.toml\))?(?=\n)", "", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
