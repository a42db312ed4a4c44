"""Protobuf package org.lfedge.eve.certs (generated modules live here)."""
