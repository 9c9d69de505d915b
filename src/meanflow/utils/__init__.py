"""Small helpers with no knowledge of methods or networks: image grids, PNG files, plots."""
