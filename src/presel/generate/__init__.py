"""presel.generate"""
