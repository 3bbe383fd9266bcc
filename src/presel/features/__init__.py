"""presel.features"""
