"""Print a seeded uniform random sample of the mutant names mutmut generated (for mutation.sh).

    python scripts/mutation_sample.py N SEED    (run in mutmut's work folder, after generation)
"""

import glob
import json
import random
import sys
from pathlib import Path


def main() -> None:
    size, seed = int(sys.argv[1]), int(sys.argv[2])
    names = sorted(name for meta in glob.glob("mutants/**/*.py.meta", recursive=True)
                   for name in json.loads(Path(meta).read_text())["exit_code_by_key"])
    if not names:
        sys.exit("no generated mutants found under mutants/ (did mutmut's generation fail?)")
    print("\n".join(sorted(random.Random(seed).sample(names, min(size, len(names))))))


if __name__ == "__main__":
    main()
