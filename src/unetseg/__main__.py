"""`python -m unetseg ...` is the same as `unetseg ...`."""

from unetseg.cli import main

if __name__ == "__main__":
    main()
