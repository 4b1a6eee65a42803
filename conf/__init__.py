"""samft's Hydra configs (installed as the package `samft.conf`).

Importing it registers the resolvers the configs use (`samft_dataset`), so they work
wherever Hydra reads these files.
"""

from samft.commands.run_name import register_resolvers

register_resolvers()
