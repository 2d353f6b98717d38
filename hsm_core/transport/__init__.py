"""Ways to reach other machines (ssh); used by the ssh and hpc compute sources."""
