"""``python -m selfsup`` — what ``torchrun --nproc_per_node N -m selfsup pretrain ...`` runs."""

from selfsup.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
