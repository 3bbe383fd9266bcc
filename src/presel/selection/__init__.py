"""presel.selection"""
