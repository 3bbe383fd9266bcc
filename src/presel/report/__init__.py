"""presel.report"""
