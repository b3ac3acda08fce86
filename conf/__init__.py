# Makes conf/ the Python package transferlab.conf (src/transferlab/conf links here), so
# Hydra finds it as pkg://transferlab.conf from a checkout and from an installed wheel.
