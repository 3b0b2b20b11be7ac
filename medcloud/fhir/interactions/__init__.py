"""One module per FHIR RESTful interaction (http.html)."""
