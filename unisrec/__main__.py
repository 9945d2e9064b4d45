"""`python -m unisrec` (also what `torchrun -m unisrec` runs)."""

from unisrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
