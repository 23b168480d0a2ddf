"""The run log: run directories (`store`), the record schema (`schema`), pandas (`frame`), resume (`progress`)."""
