"""postfix"""
