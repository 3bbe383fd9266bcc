"""presel.executors"""
