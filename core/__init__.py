"""Leaf helpers shared by the apps and the project (environment readers, API errors).

`core` imports nothing from the other server packages: it sits below `accounts`."""
