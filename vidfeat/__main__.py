from vidfeat.cli import script

script()
