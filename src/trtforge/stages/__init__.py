"""One module per stage. Each stage is a function of its input files and a config that
holds every recipe field it reads, writing its outputs atomically; nothing here is
imported when dodo.py loads (task generators reference stages by module path)."""
