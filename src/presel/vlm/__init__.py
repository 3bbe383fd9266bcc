"""presel.vlm"""
