"""Tasks: items of any shape and the datasets they are loaded from."""
