"""The recovery ladder and the filesystem, process and resource helpers it calls."""
