"""mailhost"""
