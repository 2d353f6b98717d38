"""hsm: one sweep over local processes, SSH hosts and Slurm/PBS clusters."""

__version__ = "0.1.0"
