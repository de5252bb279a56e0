"""`python -m rlpost.main_ppo`, shaped like `python -m verl.trainer.main_ppo`: a verl run script's Hydra arguments
(--config-path/--config-name, key=value, +key=value, ~key) with verl's keys, run by rlpost's trainer."""

import sys

from rlpost.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
