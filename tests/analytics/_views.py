"""ViewDefinitions shared by the server tests ($run and $viewdefinition-export)."""

PATIENT_VIEW = {
    "resourceType": "ViewDefinition",
    "name": "patient_demographics",
    "url": "http://example.org/ViewDefinition/patient_demographics",
    "version": "1.0",
    "status": "active",
    "resource": "Patient",
    "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                           {"name": "family", "path": "name.family.first()"},
                           {"name": "birth_date", "path": "birthDate", "type": "date"}]}],
}
OBS_VIEW = {
    "resourceType": "ViewDefinition", "name": "obs", "status": "draft", "resource": "Observation",
    "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                           {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                           {"name": "code", "path": "code.text"}]}],
}
