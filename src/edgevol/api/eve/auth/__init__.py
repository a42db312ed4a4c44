"""Protobuf package org.lfedge.eve.auth (generated modules live here)."""
