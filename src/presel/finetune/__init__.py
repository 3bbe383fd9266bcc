"""presel.finetune"""
