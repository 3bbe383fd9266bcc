"""presel.importance"""
