"""fenji.codecs.image"""
