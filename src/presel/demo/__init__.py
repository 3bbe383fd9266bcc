"""presel.demo"""
