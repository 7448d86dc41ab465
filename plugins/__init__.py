"""Built-in leakdbt plugins (hardening passes, tenancy detectors), registered through the same
entry points a third party would use. The first ones arrive with the hardening-pass issue."""
